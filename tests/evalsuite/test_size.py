import pytest
import torch
from transformers import GPT2LMHeadModel

from evalsuite.metrics import gpt2_facts
from evalsuite.size import bytes_on_disk
from tests.tiny_models import tiny_config


def test_param_arithmetic_from_config_matches_model():
    for kwargs in ({}, {"n_inner": 96}, {"n_layer": 3, "n_embd": 48, "n_head": 6}):
        model = GPT2LMHeadModel(tiny_config(**kwargs))
        assert model.lm_head.weight is model.transformer.wte.weight  # tied: counted once below
        assert gpt2_facts(model.config.to_dict(), 0).params == sum(p.numel() for p in model.parameters())


def test_bytes_on_disk(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "vocab.json").write_bytes(b"y" * 7)
    assert bytes_on_disk(tmp_path) == 107
    assert bytes_on_disk(tmp_path, weights_only=True) == 100
    assert bytes_on_disk(tmp_path / "a.safetensors") == 100


def test_a_second_graph_beside_model_onnx_is_not_counted_twice(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 100)
    (tmp_path / "model_decode.onnx").write_bytes(b"y" * 90)  # the same weights as a CPU decode graph
    (tmp_path / "config.json").write_text("{}")
    assert bytes_on_disk(tmp_path, weights_only=True) == 100
    assert bytes_on_disk(tmp_path) == 190 + 2  # every file, when asked for every file
    (tmp_path / "model.onnx").unlink()
    assert bytes_on_disk(tmp_path, weights_only=True) == 90  # alone, it is the model


def test_runner_reports_looked_up_tables(tiny):
    from evalsuite.runner import TorchRunner

    E, P, V = tiny.config.n_embd, tiny.config.n_positions, tiny.config.vocab_size
    assert TorchRunner(tiny).gathered_weight_bytes == P * E * 4  # tied: wte is read whole by the head
    tiny.lm_head.weight = torch.nn.Parameter(tiny.lm_head.weight.detach().clone())
    assert TorchRunner(tiny).gathered_weight_bytes == (P + V) * E * 4


def test_projection_counts_bytes_read_per_token():
    from evalsuite import hardware
    from evalsuite.metrics import ModelFacts, projections

    facts = ModelFacts(params=0, n_layer=2, n_embd=64, weight_bytes=3_000_000, gathered_bytes=1_000_000)
    kv = 2 * 2 * 100 * 64 * 2  # K and V, 2 layers, 100 positions, fp16
    expected = hardware.TARGETS["orin-nano"].memory_bandwidth_gb_s * 1e9 / (2_000_000 + kv)
    assert projections(facts, ("orin-nano",), context=100)["orin-nano"] == pytest.approx(expected)


def test_a_tensorrt_dir_counts_the_engine_not_the_onnx_it_was_built_from(tmp_path):
    """The roofline reads each weight once: the engine ships, its source ONNX (and that ONNX's external
    data) does not; without an engine, the ONNX is what there is. GGUF files are weights."""
    from evalsuite.size import bytes_on_disk

    (tmp_path / "model.onnx").write_bytes(b"x" * 100)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 1000)
    (tmp_path / "engine.json").write_text("{}")
    assert bytes_on_disk(tmp_path, weights_only=True) == 1100
    (tmp_path / "model.engine").write_bytes(b"x" * 700)
    assert bytes_on_disk(tmp_path, weights_only=True) == 700
    (tmp_path / "model.gguf").write_bytes(b"x" * 50)
    assert bytes_on_disk(tmp_path / "model.gguf") == 50 and bytes_on_disk(tmp_path, weights_only=True) == 750
