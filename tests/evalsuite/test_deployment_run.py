"""A tiny run with an ONNX and a TensorRT export: the report names what to ship per device of
eval.targets from the runtimes the export targets declare, and lists the TensorRT export (not
built here) with its projection and why it has no measurement."""

from __future__ import annotations

import json

import pytest

from compress.models import save_model
from compress.pipeline import run_plan
from compress.plan import parse_plan
from tests.tiny_models import tiny_model


@pytest.mark.slow  # ~15 s of CPU: two exports, each validated and measured
def test_a_tiny_run_reports_what_to_ship_per_target_device(tmp_path, byte_tokenizer):
    from export.trt_runner import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine would be built and measured")
    save_model(tiny_model(vocab_size=len(byte_tokenizer), n_positions=128), tmp_path / "m", byte_tokenizer)
    plan = parse_plan({
        "name": "ship", "model": str(tmp_path / "m"),
        "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32, "max_tokens": 200}},
        "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0},
                 "targets": ["orin-nano", "h100", "host"], "ppl_budget": 1.05},
        "steps": [{"export": {"format": "onnx", "validation": {"tokens": 128, "windows": 1}}},
                  {"export": {"format": "tensorrt", "precision": "fp16", "validation": {"tokens": 128, "windows": 1}}}],
    })
    run_plan(plan, tmp_path / "run", progress=False)
    metrics = {d.name: json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "run").iterdir()
               if (d / "metrics.json").exists()}
    assert metrics["01-export-onnx"]["runtime"]["name"] == "ONNX Runtime"
    assert metrics["02-export-tensorrt"]["runtime"]["runs_on"] == ["nvidia-gpu"]
    assert metrics["00-base"]["runtime"]["deploys"] is False and metrics["00-base"]["artifact"] == "model"

    md = (tmp_path / "run" / "report.md").read_text()
    ship = md.split("## What to ship, per target device")[1].split("\n## ")[0]
    lines = [line for line in ship.splitlines() if line.startswith("| ") and not line.startswith("| device")]
    by_device = {}
    for line in lines:
        by_device.setdefault(line.split(" | ")[0][2:], []).append(line)
    assert list(by_device) == ["orin-nano (cpu, nvidia-gpu)", "h100 (nvidia-gpu)", "host (cpu)"]
    for device in ("orin-nano (cpu, nvidia-gpu)", "h100 (nvidia-gpu)"):
        pick, trt = by_device[device]  # the ONNX export (the only measured export), then the TensorRT one
        assert "| 01-export-onnx | ONNX Runtime | 01-export-onnx/model.onnx |" in pick and "projected" in pick
        assert "| 02-export-tensorrt (not measured) | TensorRT | 02-export-tensorrt/model.onnx |" in trt
        assert "not measured here (engine is built on the device)" in trt and "projected" in trt
    (host,) = by_device["host (cpu)"]  # TensorRT does not run on a CPU; the host's numbers are measured
    assert "| ONNX Runtime |" in host and " measured |" in host
    # the plot cannot place it (no perplexity, no latency): its footnote says why and what it projects
    assert "02-export-tensorrt (not measured here (engine is built on the device); projected" in \
        (tmp_path / "run" / "report.html").read_text()
    # the main table too, instead of a bare status
    assert "| tensorrt · target |" in md and "| not measured here (engine is built on the device) |" in md

    # a run measured before metrics carried the runtime gets it when its steps are reused (no re-measuring)
    base = tmp_path / "run" / "00-base" / "metrics.json"
    old = json.loads(base.read_text())
    base.write_text(json.dumps({k: v for k, v in old.items() if k not in ("runtime", "artifact")}))
    run_plan(plan, tmp_path / "run", progress=False)
    again = json.loads(base.read_text())
    assert again["runtime"] == old["runtime"] and again["ppl"] == old["ppl"] and again["artifact"] == "model"
