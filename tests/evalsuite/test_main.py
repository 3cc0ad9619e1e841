"""`python -m evalsuite` on a tiny saved model, a step dir, bad inputs; `compare` on two runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.models import save_model

from evalsuite import hardware
from evalsuite.__main__ import main
from evalsuite.data import builtin_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner
from tests.tiny_models import tiny_model

FAST = ["--seq-len", "32", "--prompt", "8", "--new-tokens", "4", "--repeats", "2", "--sample-tokens", "4"]


@pytest.fixture(autouse=True)
def _no_bandwidth_benchmark(monkeypatch):
    """The host copy benchmark moves 2.5 GB; its arithmetic is tested in test_hardware."""
    monkeypatch.setattr(hardware, "measure_host_bandwidth", lambda: 20.0)


@pytest.fixture
def model_dir(tmp_path, byte_tokenizer):
    return save_model(tiny_model(seed=3, vocab_size=len(byte_tokenizer)), tmp_path / "tiny-gpt2", byte_tokenizer)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(builtin_text("python-docs", "heldout")[:1500])
    return path


def test_checkpoint_dir_prints_the_row(model_dir, text_file, byte_tokenizer, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert main([str(model_dir), "--data", str(text_file), *FAST, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| tiny-gpt2 | torch · cpu |" in printed and "projected tok/s orin-nano" in printed
    m = json.loads(out_json.read_text())
    direct = perplexity(TorchRunner(tiny_model(seed=3, vocab_size=len(byte_tokenizer))),
                        tokenize(text_file.read_text(), byte_tokenizer), seq_len=32, progress=False)
    assert m["ppl"] == pytest.approx(direct.ppl, rel=1e-5)
    assert m["decode_ms_per_token"]["p50"] > 0 and m["latency"]["new_tokens"] == 4
    assert len(m["samples"]) == 3 and set(m["projected_decode_tokens_per_s"]) == {"orin-nano", "agx-orin", "host"}
    assert m["host_roofline"]["bandwidth_gb_s"] == 20.0


def test_step_dir_reads_step_json(model_dir, text_file, tmp_path, capsys):
    step = tmp_path / "run" / "01-prune"
    save_model(tiny_model(seed=3, vocab_size=260), step / "model")  # no tokenizer beside it: the base's is used
    save_model(tiny_model(seed=4, vocab_size=260), tmp_path / "run" / "00-base" / "model")
    for f in model_dir.glob("*.json"):
        if f.name != "config.json":
            (tmp_path / "run" / "00-base" / "model" / f.name).write_text(f.read_text())
    (step / "step.json").write_text(json.dumps({"model_dir": "model", "backend": "torch", "summary": "pruned"}))
    assert main([str(step), "--data", str(text_file), *FAST, "--sample-tokens", "0", "--json",
                 str(tmp_path / "m.json")]) == 0
    assert "| 01-prune | torch · cpu |" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["summary"] == "pruned" and m["samples"] is None


def _quantized_dir(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def _extra_tensor_dir(model_dir):
    weights = load_file(model_dir / "model.safetensors")
    weights["transformer.h.0.mlp.c_fc.qweight"] = torch.zeros(64, 32, dtype=torch.int8)  # packed low-bit weights
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir


def _truncated(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    return model_dir


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "missing: no such file or directory"),
    (lambda d: d.parent, "not a model directory"),
    (_quantized_dir, "quantized checkpoint"),  # with compress's runner registered: "... cannot load: not written by gpt2-edge"
    (_extra_tensor_dir, "not a stock GPT-2 checkpoint (1 tensors do not match, e.g. transformer.h.0.mlp.c_fc.qweight)"),
    (lambda d: _truncated(d), "cannot load the checkpoint (Error while deserializing header"),
])
def test_bad_model_is_one_line_error(model_dir, text_file, capsys, make, message):
    assert main([str(make(model_dir)), "--data", str(text_file), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_data_path_fails_before_loading(model_dir, capsys):
    assert main([str(model_dir), "--data", str(model_dir / "nope.txt"), *FAST]) == 2
    assert "nope.txt: no such file or directory" in capsys.readouterr().err


def _write_run(run, decode_ms):
    for i, (name, ppl) in enumerate([("00-base", 20.0), ("01-prune", 22.0)]):
        d = run / name
        d.mkdir(parents=True)
        ms = decode_ms[i]
        (d / "metrics.json").write_text(json.dumps({
            "step": name, "backend": "torch", "device": "cpu", "status": "measured", "ppl": ppl,
            "ppl_ratio_to_base": ppl / 20.0, "bytes_on_disk": 1000, "decode_ms_per_token": {"p50": ms, "p90": ms},
            "tokens_per_s": 1000 / ms, "projected_decode_tokens_per_s": {}}))
        (d / "DONE").write_text("")


def test_compare_prints_both_tables_and_ratios(tmp_path, capsys):
    _write_run(tmp_path / "a", [10.0, 5.0])
    _write_run(tmp_path / "b", [10.0, 2.5])
    (tmp_path / "b" / "plan.resolved.yaml").write_text("eval: {ppl_budget: 1.05}\n")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.count("| 01-prune | torch · cpu |") == 2  # once in each run's table
    ratios = [line for line in out.splitlines() if line.startswith("| 01-prune | 1.000 |")]
    assert ratios and "| 0.500 |" in ratios[0] and "| 2.000 |" in ratios[0]  # decode ms halved, tokens/s doubled
    # Run A's budget is the default 1.10 (01-prune at 1.1x fits); B's plan says 1.05 (only its base fits).
    assert "| best: 01-prune → 00-base |" in out


def test_compare_rejects_a_non_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_module_entry_point_reports_bad_path(tmp_path):
    r = subprocess.run([sys.executable, "-m", "evalsuite", str(tmp_path / "nope"), "--data", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"


def _with_protocol(run, seq_len=32, stride=32, vocab=None, data="corpus/heldout"):
    for d in run.iterdir():
        if (d / "metrics.json").exists():
            m = json.loads((d / "metrics.json").read_text())
            m["eval"] = {"data": data, "seq_len": seq_len, "stride": stride, "tokens_total": 800}
            (d / "metrics.json").write_text(json.dumps(m))
    if vocab is not None:
        (run / "00-base" / "model").mkdir()
        (run / "00-base" / "model" / "vocab.json").write_text(json.dumps(vocab))
        (run / "00-base" / "model" / "merges.txt").write_text("#version: 0.2\n")


def test_compare_refuses_runs_measured_differently(tmp_path, capsys):
    _write_run(tmp_path / "a", [10.0, 5.0])
    _write_run(tmp_path / "b", [10.0, 2.5])
    _with_protocol(tmp_path / "a", seq_len=32, vocab={"a": 0, "b": 1})
    _with_protocol(tmp_path / "b", seq_len=64, vocab={"a": 0, "c": 1})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are not comparable" in err and "seq_len: 32 vs 64" in err
    assert "tokenizer: 2 tokens, sha256" in err and "--force" in err
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--force"]) == 0
    out = capsys.readouterr().out
    assert "**NOT COMPARABLE (--force)" in out and "seq_len: 32 vs 64" in out
    assert "| 01-prune | 1.000 |" in out  # the ratios are there, under the warning


def _rename_step(run, old: str, new: str, **metrics) -> None:
    (run / old).rename(run / new)
    m = json.loads((run / new / "metrics.json").read_text())
    (run / new / "metrics.json").write_text(json.dumps({**m, "step": new, **metrics}))


def test_compare_matches_steps_by_place_and_kind_not_by_name(tmp_path, capsys):
    _write_run(tmp_path / "a", [10.0, 5.0])
    _write_run(tmp_path / "b", [10.0, 2.5])
    _rename_step(tmp_path / "a", "01-prune", "01-quantize-gptq-w4g32")
    _rename_step(tmp_path / "b", "01-prune", "01-quantize-awq-w4g32")
    for run in ("a", "b"):
        _with_protocol(tmp_path / run, vocab={"a": 0, "b": 1})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "NOT COMPARABLE" not in out and "only in" not in out
    assert "| 01-quantize-gptq-w4g32 vs 01-quantize-awq-w4g32 |" in out


def test_compare_lists_steps_of_another_kind_as_unmatched(tmp_path, capsys):
    _write_run(tmp_path / "a", [10.0, 5.0])
    _write_run(tmp_path / "b", [10.0, 2.5])
    _rename_step(tmp_path / "b", "01-prune", "01-distill")
    for run in ("a", "b"):
        _with_protocol(tmp_path / run, vocab={"a": 0, "b": 1})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "Steps only in A (no ratio): 01-prune\n" in out and "Steps only in B (no ratio): 01-distill" in out


def test_compare_flags_timings_not_to_be_trusted(tmp_path, capsys):
    _write_run(tmp_path / "a", [10.0, 5.0])
    _write_run(tmp_path / "b", [10.0, 2.5])
    m = json.loads((tmp_path / "b" / "01-prune" / "metrics.json").read_text())
    m["latency"] = {**(m.get("latency") or {}), "unreliable": "other processes used 1.20 cores while it ran"}
    (tmp_path / "b" / "01-prune" / "metrics.json").write_text(json.dumps(m))
    for run in ("a", "b"):
        _with_protocol(tmp_path / run, vocab={"a": 0, "b": 1})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "Timings not to be trusted in: 01-prune" in capsys.readouterr().out
