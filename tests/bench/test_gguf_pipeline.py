"""bench/gguf_pipeline.py: which step directories of a bench/pipeline.yaml run it reads, the verdict of
its two checks, and bench/peers.py's measure_rows for a row that is scored but not timed. (The bench
itself needs llama-cpp-python and a real run: bench/results/*-gguf-pipeline.md.)"""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from compress.errors import UserError
from evalsuite.runner import TorchRunner
from tests.tiny_models import tiny_model

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_gguf_pipeline", BENCH / "gguf_pipeline.py")
gp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gp)


def _run_dir(tmp_path: Path, steps: list[tuple[str, str, dict]]) -> Path:
    """A run directory holding only manifest.json and each step's step.json."""
    for name, kind, extra in steps:
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.json").write_text(json.dumps({"name": name, "step_kind": kind, "summary": name,
                                                               "model_dir": None, "backend": "torch", **extra}))
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": [{"name": n} for n, _, _ in steps]}))
    return tmp_path


PIPELINE = [("00-base", "base", {"model_dir": "model"}), ("01-prune", "prune", {"model_dir": "model"}),
            ("02-distill", "distill", {"model_dir": "model"}),
            ("03-export-gguf", "export", {"backend": "llama.cpp", "artifact": "model.gguf", "config": {"type": "f16"}}),
            ("04-quantize-gptq-w4g128", "quantize", {"model_dir": "model"}),
            ("05-export-gguf", "export", {"backend": "llama.cpp", "artifact": "model.gguf", "config": {"type": "q4_0"}}),
            ("06-export-onnx", "export", {"backend": "onnxruntime", "artifact": "model.onnx"})]


def test_plan_run_reads_the_pipelines_steps(tmp_path):
    run = gp.PlanRun(_run_dir(tmp_path, PIPELINE))
    assert run.teacher == tmp_path / "00-base" / "model"
    assert run.student == tmp_path / "02-distill" / "model"
    assert run.gptq == tmp_path / "04-quantize-gptq-w4g128" / "model"
    assert (run.gguf_f16, run.gguf_q4_0) == (tmp_path / "03-export-gguf" / "model.gguf",
                                             tmp_path / "05-export-gguf" / "model.gguf")
    assert run.onnx == tmp_path / "06-export-onnx"


def test_plan_run_without_a_gguf_step_names_it(tmp_path):
    with pytest.raises(UserError, match="type: f16"):
        gp.PlanRun(_run_dir(tmp_path, [s for s in PIPELINE if s[0] != "03-export-gguf"]))
    with pytest.raises(UserError, match="manifest.json"):
        gp.PlanRun(tmp_path / "nothing")


def _report(q8_ppl: float, f16_equal: bool):
    row = {"bytes": 1e6, "ppl": 100.0, "prefill_ms": 10.0, "decode_ms": 5.0}
    rows = {gp.STUDENT: row, gp.Q8_ROW: {**row, "ppl": q8_ppl},
            "peer: llama.cpp Q4_0 of the teacher": {"row": "peer", "error": "PeerError: no converter"}}
    checks = [{"pair": "f16 GGUF vs torch fp32 student", "prompt": "p", "equal": f16_equal, "n": 4,
               "first": None if f16_equal else 2, "gap": None if f16_equal else 1e-5, "readback_equal": f16_equal}]
    run = types.SimpleNamespace(summaries={"02-distill": "distilled"})
    args = types.SimpleNamespace(run=Path("RUN"), threads=2, tokens=1024, heldout=Path("heldout"), new_tokens=8,
                                 rounds=1, note="loaded")
    import datetime

    return gp.report(rows, checks, run, args, datetime.datetime.now(), types.SimpleNamespace(
        cores=1.5, loadavg_before=3.0, loadavg_after=4.0), "CPU")


def test_report_passes_only_with_equal_greedy_tokens_and_q8_ppl_within_half_a_percent():
    text, passed = _report(100.4, True)
    assert passed and "+0.400%" in text and "| +0.40% |" in text and "FAIL" not in text and "no converter" in text
    assert not _report(100.6, True)[1]
    assert not _report(99.4, True)[1]
    text, passed = _report(100.0, False)
    assert not passed and "FAIL" in text and "DIFFERENT" in text


def test_measure_rows_scores_a_row_without_latency_and_times_the_others(tmp_path):
    torch.manual_seed(0)
    runner = TorchRunner(tiny_model(n_positions=256))
    ids = torch.randint(0, runner.vocab_size, (300,))
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 10)
    peers = gp.sibling("peers")
    rows = peers.measure_rows({
        "scored": lambda: peers.Peer(path, lambda: runner, None),
        "timed": lambda: peers.Peer(path, lambda: runner, lambda: (1.0, 2.0)),
    }, ids, rounds=2)
    assert rows[0]["ppl"] == rows[1]["ppl"] and rows[0]["bytes"] == 10
    assert "decode_ms" not in rows[0] and (rows[1]["prefill_ms"], rows[1]["decode_ms"]) == (1.0, 2.0)
