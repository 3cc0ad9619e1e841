"""A hostile model directory is refused at plan time, in one line, after bounded work."""

import json
import os
import struct
import time

import pytest

from compress.errors import PlanError, UserError
from compress.model_files import MAX_TENSORS, read_header
from compress.models import check_gpt2_dir, save_model
from compress.plan import parse_plan
from tests.tiny_models import tiny_model

PLAN = {"name": "hostile", "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32}}}


@pytest.fixture
def model_dir(tmp_path, byte_tokenizer):
    return save_model(tiny_model(seed=0, vocab_size=len(byte_tokenizer)), tmp_path / "model", byte_tokenizer)


def refused(model_dir, **plan) -> str:
    """The one problem line of a plan on model_dir (validated within a few seconds)."""
    t0 = time.monotonic()
    with pytest.raises(PlanError) as e:
        parse_plan({**PLAN, "model": str(model_dir), **plan})
    assert time.monotonic() - t0 < 30
    assert len(e.value.problems) == 1
    return e.value.problems[0]


def write_safetensors(path, header: dict, data_len: int, sparse: bool = False) -> None:
    blob = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        if sparse:
            fh.truncate(8 + len(blob) + data_len)
        else:
            fh.write(b"\0" * data_len)


def config_of(model_dir):
    return json.loads((model_dir / "config.json").read_text())


def set_config(model_dir, **values):
    (model_dir / "config.json").write_text(json.dumps({**config_of(model_dir), **values}))


def test_a_fifo_as_weights_is_refused_unopened(model_dir):
    (model_dir / "model.safetensors").unlink()
    os.mkfifo(model_dir / "model.safetensors")
    assert "is a FIFO" in refused(model_dir)


def test_a_fifo_as_a_tokenizer_file_is_refused_unopened(model_dir):
    (model_dir / "tokenizer_config.json").unlink()
    os.mkfifo(model_dir / "tokenizer_config.json")
    assert "tokenizer_config.json: is a FIFO" in refused(model_dir)


def test_a_fifo_as_text_is_refused(tmp_path, model_dir):
    os.mkfifo(tmp_path / "eval.txt")
    line = refused(model_dir, data={"eval": {"path": str(tmp_path / "eval.txt")}})
    assert "not a regular file" in line


def test_a_sparse_extra_tensor_is_refused_before_any_digest(model_dir):
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "np") as f:
        names = list(f.keys())
    header = json.loads((model_dir / "model.safetensors").read_bytes()[8:8 + struct.unpack(
        "<Q", (model_dir / "model.safetensors").read_bytes()[:8])[0]])
    end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    huge = 1 << 32  # 4 GiB declared, a few KB on disk
    header["transformer.extra"] = {"dtype": "U8", "shape": [huge], "data_offsets": [end, end + huge]}
    write_safetensors(model_dir / "model.safetensors", header, end + huge, sparse=True)
    assert names and "a sparse file" in refused(model_dir)


def test_a_header_of_many_empty_tensors_is_refused(tmp_path):
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}
    write_safetensors(tmp_path / "x.safetensors", header, 0)
    with pytest.raises(UserError, match="tensors, more than"):
        read_header(tmp_path / "x.safetensors")


@pytest.mark.parametrize("shape", [[-1, 4], [1 << 50], "x"])
def test_a_bad_shape_is_refused(tmp_path, shape):
    write_safetensors(tmp_path / "x.safetensors", {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}}, 16)
    with pytest.raises(UserError, match="invalid shape"):
        read_header(tmp_path / "x.safetensors")


def test_declared_bytes_must_match_the_shape(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", {"t": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, 16)
    with pytest.raises(UserError, match="declares 16 bytes"):
        read_header(tmp_path / "x.safetensors")


def test_more_layers_in_the_config_than_in_the_weights(model_dir):
    set_config(model_dir, n_layer=5)
    assert "n_layer 5, the weights have 2 block(s)" in refused(model_dir)


@pytest.mark.parametrize("key,value", [("n_layer", 100_000), ("n_embd", 10**7), ("n_head", 0), ("vocab_size", -3)])
def test_config_shapes_out_of_bounds(model_dir, key, value):
    set_config(model_dir, **{key: value})
    assert f"{key} must be an integer" in refused(model_dir)


def test_a_width_that_disagrees_with_the_weights(model_dir):
    set_config(model_dir, n_inner=128)
    assert "config.json implies" in refused(model_dir)


def test_a_vocab_json_that_is_a_list(model_dir):
    (model_dir / "tokenizer.json").unlink(missing_ok=True)
    (model_dir / "vocab.json").write_text(json.dumps(["a", "b"]))
    (model_dir / "merges.txt").touch()
    assert "vocab.json: expected a JSON object" in refused(model_dir)


def test_a_tokenizer_larger_than_the_model_vocabulary(tmp_path, byte_tokenizer):
    small = save_model(tiny_model(seed=0, vocab_size=64), tmp_path / "small", byte_tokenizer)
    assert "the model embeds only vocab_size 64" in refused(small)


def test_a_valid_dir_passes(model_dir):
    assert check_gpt2_dir(model_dir) == model_dir


@pytest.mark.parametrize("where", ["seed", "eval.samples.seed"])
def test_seeds_are_bounded(model_dir, where):
    plan = {"seed": 10**30} if where == "seed" else {"eval": {"samples": {"seed": 2**70}}}
    assert "less than or equal to 2147483647" in refused(model_dir, **plan)


def test_a_sparse_weights_file_is_refused_before_it_is_read(model_dir):
    weights = model_dir / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size + (1 << 30))  # a 1 GiB hole at the end
    assert "a sparse file" in refused(model_dir)


def test_an_extra_tensor_is_refused_by_name(model_dir):
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    weights["transformer.extra"] = weights["transformer.ln_f.bias"].clone()
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert "tensor 'transformer.extra' is not part of a GPT-2" in refused(model_dir)
