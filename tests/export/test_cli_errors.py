"""Hostile inputs end in one line on every entry point (issue 23): export.generate, python -m evalsuite,
export.tensorrt, compress.run and the bench scripts answer `error: ...` and exit 2 (3: the machine),
never a traceback. Each CLI's main is called in-process (capsys); argparse refusals exit through
SystemExit(2) after one line."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from compress.models import save_model
from tests.tiny_models import tiny_model
from evalsuite.__main__ import main as eval_main
from evalsuite.data import builtin_text
from export import generate as gen_mod
from export import tensorrt as trt_mod

ROOT = Path(__file__).resolve().parents[2]
EVAL_FAST = ["--seq-len", "32", "--prompt", "8", "--new-tokens", "4", "--repeats", "1", "--sample-tokens", "0"]


@pytest.fixture
def model_dir(tmp_path, byte_tokenizer):
    return save_model(tiny_model(seed=1, vocab_size=len(byte_tokenizer)), tmp_path / "m", byte_tokenizer)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(builtin_text("python-docs", "heldout")[:1000])
    return path


def _copy(model_dir: Path, name: str) -> Path:
    out = model_dir.parent / name
    shutil.copytree(model_dir, out)
    return out


def _edit_header(model_dir: Path, name: str, shape) -> Path:
    """A copy whose first tensor declares `shape`; the header stays valid JSON and its offsets the file's."""
    out = _copy(model_dir, name)
    f = out / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[next(k for k in header if k != "__metadata__")]["shape"] = shape
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return out


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # "[torch on cpu ...]"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _both(model: Path, text_file: Path, capsys, *extra: str) -> tuple[str, str]:
    """(export.generate's line, python -m evalsuite's line) for one bad model / flag, each exit 2."""
    assert gen_mod.main([str(model), "hi", "--max-new-tokens", "2", *extra]) == 2
    gen = _one_line(capsys)
    assert eval_main([str(model), "--data", str(text_file), *EVAL_FAST, *extra]) == 2
    return gen, _one_line(capsys)


@pytest.mark.parametrize("shape", [[2 ** 40, 2 ** 40], [-1, 64], [2 ** 20, 2 ** 20]])
def test_safetensors_with_a_huge_or_negative_shape(model_dir, text_file, capsys, shape):
    bad = _edit_header(model_dir, "bad-shape", shape)
    gen, ev = _both(bad, text_file, capsys)
    assert "model.safetensors: not a readable safetensors file" in gen
    assert "model.safetensors" in ev or "cannot load the checkpoint" in ev


def test_vocab_json_that_is_a_list(model_dir, text_file, capsys):
    bad = _copy(model_dir, "vocab-list")
    (bad / "tokenizer.json").unlink()  # vocab.json + merges.txt is the tokenizer then
    (bad / "vocab.json").write_text(json.dumps(["a", "b"]))
    for line in _both(bad, text_file, capsys):
        assert "vocab.json: expected a JSON object" in line and "list" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA")
def test_device_cuda_on_a_cpu_only_torch(model_dir, text_file, capsys):
    for line in _both(model_dir, text_file, capsys, "--device", "cuda"):
        assert line.startswith("error: --device cuda: ") and "use --device cpu" in line


def test_device_meta(model_dir, text_file, capsys):
    for line in _both(model_dir, text_file, capsys, "--device", "meta"):
        assert line.startswith("error: --device meta: cannot run a model there")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_step_dir_without_tensorrt(model_dir, text_file, capsys, tmp_path):
    step = tmp_path / "05-export-tensorrt"
    step.mkdir()
    for f in ("config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (model_dir / f).exists():
            shutil.copy(model_dir / f, step / f)
    (step / "model.onnx").write_bytes(b"graph")
    (step / "step.json").write_text(json.dumps({"artifact": "model.onnx", "backend": "tensorrt", "summary": "s"}))
    gen, ev = _both(step, text_file, capsys)
    assert "TensorRT is not installed here" in gen and f"python -m export.generate {step / 'model.onnx'}" in gen
    assert "TensorRT is not installed here" in ev
    for cmd in (["run", str(step), "hi"], ["build", str(step)]):
        assert trt_mod.main(cmd) == 2
        assert "TensorRT is not installed here" in _one_line(capsys)
    from evalsuite.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable):  # --debug: the traceback instead of the line
        trt_mod.main(["run", str(step), "hi", "--debug"])


def test_evalsuite_on_an_onnx_file_prints_the_toolkits_own_error_as_one_line(model_dir, text_file, capsys):
    onnx = _copy(model_dir, "onnx-dir") / "model.onnx"
    onnx.write_bytes(b"not a protobuf")
    assert eval_main([str(onnx), "--data", str(text_file), *EVAL_FAST]) == 2
    assert "ONNX Runtime cannot load this model" in _one_line(capsys)


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}_cli", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_zero_or_negative_is_refused_on_every_cli(model_dir, text_file, tmp_path, capsys, threads):
    from compress.run import main as run_main

    calls = [lambda: gen_mod.main([str(model_dir), "hi", "--threads", threads]),
             lambda: eval_main([str(model_dir), "--data", str(text_file), "--threads", threads]),
             lambda: run_main([str(tmp_path / "plan.yaml"), "--threads", threads]),
             lambda: _load_bench("torch_static").main(["--threads", threads])]
    for call in calls:
        with pytest.raises(SystemExit) as e:
            call()
        assert e.value.code == 2
        assert f"argument --threads: must be in 1..1024 (got {threads})" in _one_line(capsys)


def test_draft_with_another_tokenizer_of_the_same_size_is_refused(model_dir, capsys):
    draft = _copy(model_dir, "draft")
    spec = json.loads((draft / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[65:67]  # two byte tokens: same size, different meaning of two ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (draft / "tokenizer.json").write_text(json.dumps(spec))
    (draft / "vocab.json").write_text(json.dumps(vocab))
    args = [str(model_dir), "hi", "--max-new-tokens", "4", "--draft", str(draft)]
    assert gen_mod.main(args) == 2
    line = _one_line(capsys)
    assert f"error: --draft {draft}: its tokenizer differs from the target's" in line and "content digest" in line
    assert gen_mod.main([*args[:-1], str(_copy(model_dir, "same"))]) == 0  # the same tokenizer is accepted
    capsys.readouterr()
