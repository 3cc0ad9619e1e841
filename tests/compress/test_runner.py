import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.plan import load_plan
from compress.runner import dry_run, run_plan

TINY_PLAN = """\
name: tiny
model:
  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, seq_len: 32, batch_size: 4,
             tokenizer: {vocab_size: 300}, tokens: TOKENS, checkpoint_every: 10, eval_every: 1000}
data:
  train: {builtin: python-docs, max_chars: 60000}
  eval: {builtin: python-docs, split: heldout, seq_len: 32, max_tokens: 1500}
eval:
  latency: {prompt: 8, new_tokens: 4, repeats: 1, warmup: 0}
  targets: [orin-nano, host]
"""


def tiny_plan(tmp_path, tokens=3000, name="plan.yaml"):
    path = tmp_path / name
    path.write_text(TINY_PLAN.replace("TOKENS", str(tokens)))
    return path


METRIC_KEYS = {"schema", "step", "kind", "backend", "device", "status", "params", "bytes_on_disk", "weight_bytes",
               "ppl", "ppl_ratio_to_base", "eval", "prefill_ms", "decode_ms_per_token", "tokens_per_s",
               "peak_mem_bytes", "latency", "projected_decode_tokens_per_s", "eval_wall_s"}


def test_run_writes_the_run_directory_and_resumes(tmp_path):
    plan = load_plan(tiny_plan(tmp_path))
    out = tmp_path / "run"
    first = run_plan(plan, out, progress=False)
    assert [r.status for r in first.records] == ["ran"]
    for name in ("plan.resolved.yaml", "manifest.json", "report.md", "metrics.csv",
                 "00-base/DONE", "00-base/step.json", "00-base/log.txt", "00-base/model/model.safetensors"):
        assert (out / name).exists(), name
    m = json.loads((out / "00-base" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert 1 < m["ppl"] < 300 and m["ppl_ratio_to_base"] == 1.0  # trained a little: below the 300-token vocab
    assert set(m["projected_decode_tokens_per_s"]) == {"orin-nano", "host"}
    assert m["eval"]["tokens_scored"] > 1000 and m["latency"]["new_tokens"] == 4
    report = (out / "report.md").read_text()
    assert "| 00-base |" in report and "Run wall time" in report
    assert not (out / ".00-base.tmp").exists()

    again = run_plan(plan, out, progress=False)
    assert [r.status for r in again.records] == ["cached"]
    assert again.metrics[0]["ppl"] == m["ppl"]

    remeasure = load_plan(tiny_plan(tmp_path), ["data.eval.max_tokens=1000"])
    third = run_plan(remeasure, out, progress=False)
    assert [r.status for r in third.records] == ["re-measured"]
    assert third.metrics[0]["eval"]["tokens_total"] == 1000


def test_step_dir_without_done_is_never_used(tmp_path):
    plan = load_plan(tiny_plan(tmp_path))
    out = tmp_path / "run"
    run_plan(plan, out, progress=False)
    (out / "00-base" / "DONE").unlink()  # as if killed before DONE was written
    (out / "00-base" / "model" / "model.safetensors").write_bytes(b"garbage")
    result = run_plan(plan, out, progress=False)
    assert [r.status for r in result.records] == ["ran"]
    assert (out / "00-base" / "DONE").exists()


def test_dry_run_loads_nothing_and_reports_status(tmp_path, no_model_loads, monkeypatch):
    plan = load_plan(tiny_plan(tmp_path))
    monkeypatch.setattr("compress.steps.StepContext.load_input", lambda *a: pytest.fail("dry run loaded a model"))
    lines = dry_run(plan, tmp_path / "run")
    assert len(lines) == 1 and "00-base" in lines[0] and "will run" in lines[0] and "pretrain 1x32" in lines[0]
    assert "[-> 1x32]" in lines[0]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "00-base" / "metrics.json").read_text())


def test_killed_run_resumes_from_its_checkpoint_with_the_same_metrics(tmp_path):
    """SIGKILL the CLI mid-pretraining, start it again: it resumes, and the result equals a clean run."""
    plan = tiny_plan(tmp_path, tokens=32 * 4 * 60)
    cmd = [sys.executable, "-m", "compress.run", str(plan), "-q", "--set", "eval.latency=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean = tmp_path / "clean"
    subprocess.run(cmd + ["--out", str(clean)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob(".work/00-base-*/checkpoint/state.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "00-base" / "DONE").exists(), "the run finished before it could be killed"
    state = json.loads(next(killed.glob(".work/00-base-*/checkpoint/state.json")).read_text())
    assert state["step"] >= 10

    result = subprocess.run(cmd + ["--out", str(killed)], env=env, capture_output=True, text=True, check=True)
    assert f"resuming pretraining from step {state['step']}" in result.stderr
    a, b = _metrics(clean), _metrics(killed)
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)
    assert (b["params"], b["bytes_on_disk"]) == (a["params"], a["bytes_on_disk"])
