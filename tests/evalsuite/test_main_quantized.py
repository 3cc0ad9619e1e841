"""`python -m evalsuite` measures the toolkit's own quantized checkpoints (a quantize step dir, a
save_model output) through the `torch-quantized` runner compress registers in pyproject.toml's
gpt2_edge.runners entry points (evalsuite imports nothing of compress)."""

from __future__ import annotations

import json
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from compress import QuantizeConfig, quantize
from compress.models import load_model, save_model
from tests.tiny_models import tiny_model
from evalsuite import backends, hardware
from evalsuite.__main__ import main
from evalsuite.data import builtin_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--seq-len", "32", "--prompt", "8", "--new-tokens", "4", "--repeats", "1", "--sample-tokens", "0"]


def _declared(names=None):
    """The runners pyproject.toml declares (what `pip install -e .` registers), as entry points."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][backends.GROUP]
    return [EntryPoint(n, v, backends.GROUP) for n, v in table.items() if names is None or n in names]


@pytest.fixture(autouse=True)
def _no_bandwidth_benchmark(monkeypatch):
    monkeypatch.setattr(hardware, "measure_host_bandwidth", lambda: 20.0)


@pytest.fixture
def quantized(tmp_path, byte_tokenizer):
    q = quantize(tiny_model(seed=5, vocab_size=len(byte_tokenizer)), QuantizeConfig(method="rtn", bits=4, group_size=32))
    out = save_model(q, tmp_path / "run" / "01-quantize" / "model", byte_tokenizer)
    (out.parent / "step.json").write_text(json.dumps({"model_dir": "model", "backend": "torch", "summary": "rtn w4"}))
    text = tmp_path / "heldout.txt"
    text.write_text(builtin_text("python-docs", "heldout")[:1000])
    return out, text


def test_quantized_dir_and_its_step_dir_are_measured(quantized, byte_tokenizer, tmp_path, monkeypatch, capsys):
    model_dir, text = quantized
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "gpt_bigcode"
    monkeypatch.setattr(backends, "entry_points", lambda group: _declared())
    direct = perplexity(TorchRunner(load_model(model_dir)), tokenize(text.read_text(), byte_tokenizer), seq_len=32,
                        progress=False).ppl
    for path in (model_dir, model_dir.parent):
        assert main([str(path), "--data", str(text), *FAST, "--json", str(tmp_path / "m.json")]) == 0, \
            capsys.readouterr().err
        m = json.loads((tmp_path / "m.json").read_text())
        assert m["ppl"] == pytest.approx(direct, rel=1e-5) and m["backend"] == "torch"
    assert "| 01-quantize | torch · cpu |" in capsys.readouterr().out


def test_without_the_runner_registered_it_says_how_to_get_it(quantized, monkeypatch, capsys):
    model_dir, text = quantized
    monkeypatch.setattr(backends, "entry_points", lambda group: _declared({"onnxruntime"}))
    assert main([str(model_dir), "--data", str(text), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model_dir}: quantized checkpoint;") and "pip install -e ." in err
    assert err.count("\n") == 1
