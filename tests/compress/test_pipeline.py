import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typing import ClassVar

import pytest
import torch

from compress import data, pipeline, run_dir
from compress.errors import PlanError, UserError
from compress.plan import load_plan
from compress.pipeline import dry_run, run_plan
from compress.step_api import StepConfig, StepContext, StepOutput

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
    step = json.loads((out / "00-base" / "step.json").read_text())  # the step's own peak resident memory
    assert step["peak_rss_bytes"] > 10 * 2**20 and step["peak_rss_since"] in ("step start", "process start")
    assert m["step_peak_rss_bytes"] == step["peak_rss_bytes"] and "peak RSS of the step work" in report

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
    monkeypatch.setattr("compress.step_api.StepContext.load_input", lambda *a: pytest.fail("dry run loaded a model"))
    lines = dry_run(plan, tmp_path / "run")
    assert len(lines) == 1 and "00-base" in lines[0] and "will run" in lines[0] and "pretrain 1x32" in lines[0]
    assert "[-> 1x32]" in lines[0]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "00-base" / "metrics.json").read_text())


def test_killed_run_resumes_from_its_checkpoint_with_the_same_metrics(tmp_path, caplog):
    """SIGKILL the CLI mid-pretraining, start it again: it resumes, and the result equals a clean run.
    Only the killed run is a separate process (what is SIGKILLed must be one); the clean reference and
    the resumed run go through the same CLI main in this process (one thread, like the child's
    OMP_NUM_THREADS=1), which saves two interpreter starts with their torch imports."""
    from compress.run import main

    plan = tiny_plan(tmp_path, tokens=32 * 4 * 60)
    args = [str(plan), "-q", "--set", "eval.latency=null", "--threads", "1"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(args + ["--out", str(clean)]) == 0

    proc = subprocess.Popen([sys.executable, "-m", "compress.run", *args, "--out", str(killed)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob(".work/00-base-*/checkpoint/state.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "00-base" / "DONE").exists(), "the run finished before it could be killed"
    state = json.loads(next(killed.glob(".work/00-base-*/checkpoint/state.json")).read_text())
    assert state["step"] >= 10

    caplog.set_level("INFO")
    assert main(args + ["--out", str(killed)]) == 0
    assert f"resuming pretraining from step {state['step']}" in caplog.text
    a, b = _metrics(clean), _metrics(killed)
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)
    assert (b["params"], b["bytes_on_disk"]) == (a["params"], a["bytes_on_disk"])


# -- eval.max_ppl_ratio, values in memory, one cache per run -----------------------------------------

class ScrambleConfig(StepConfig):
    """A test step that wrecks the weights (as a diverged or broken step would)."""

    kind: ClassVar[str] = "scramble"
    changes_weights: ClassVar[bool] = True
    scale: float = 0.3  # noise std 15x GPT-2's init: a random model, but finite logits


def scramble(cfg: ScrambleConfig, ctx: StepContext) -> StepOutput:
    model = ctx.load_input()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * cfg.scale)
    ctx.save_model(model)
    return StepOutput(summary="scrambled", model_dir="model")


@pytest.fixture
def scramble_step(monkeypatch):
    from compress import catalog, step_api

    catalog.step_configs()  # the built-in steps first, so that the test step is one more
    monkeypatch.setitem(step_api.HANDLERS, ScrambleConfig, scramble)


def test_a_step_far_worse_than_its_input_stops_the_run_and_is_not_done(tmp_path, scramble_step):
    text = TINY_PLAN.replace("TOKENS", "3000") + "steps:\n  - scramble: {}\n  - prune: {mlp: 0.5}\n"
    (tmp_path / "plan.yaml").write_text(text)
    out = tmp_path / "run"
    assert load_plan(tmp_path / "plan.yaml").eval.max_ppl_ratio == 50  # the default
    with pytest.raises(UserError) as e:
        run_plan(load_plan(tmp_path / "plan.yaml", ["eval.max_ppl_ratio=2"]), out, progress=False)
    msg = str(e.value)
    assert msg.startswith("01-scramble: ppl ") and "x its input's" in msg and "above eval.max_ppl_ratio 2;" in msg
    base_ppl = json.loads((out / "00-base" / "metrics.json").read_text())["ppl"]
    assert f"its input's {base_ppl:.4g}" in msg
    assert not (out / "01-scramble").exists() and not (out / "02-prune").exists()  # stopped before the next step
    kept = out / ".01-scramble.tmp"
    assert (kept / "metrics.json").exists() and not (kept / "DONE").exists() and str(kept) in msg

    # accepted with a higher limit: the step runs again (nothing of it was trusted), the base is reused
    result = run_plan(load_plan(tmp_path / "plan.yaml", ["eval.max_ppl_ratio=1e6"]), out, progress=False)
    assert [r.status for r in result.records] == ["cached", "ran", "ran"]
    assert result.metrics[1]["ppl"] > 2 * base_ppl


def test_run_plan_passes_values_in_memory_and_tokenizes_once(tmp_path, monkeypatch):
    text = TINY_PLAN.replace("TOKENS", "3000") + ("steps:\n  - prune: {importance: activation, mlp: 0.5, "
                                                  "calib_tokens: 256}\n  - prune: {importance: taylor, width: 0.5, "
                                                  "calib_tokens: 256}\n")
    (tmp_path / "plan.yaml").write_text(text)
    reads, texts = [], []
    real_read, real_text = run_dir.read_json, data.source_text
    for module in (run_dir, pipeline):
        monkeypatch.setattr(module, "read_json", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(data, "source_text", lambda s: texts.append(s) or real_text(s))
    result = run_plan(load_plan(tmp_path / "plan.yaml"), tmp_path / "run", progress=False)
    assert [r.status for r in result.records] == ["ran", "ran", "ran"]
    assert reads == []  # nothing just written is read back
    plan = load_plan(tmp_path / "plan.yaml")
    assert texts.count(plan.data.train) == 1  # both prune steps calibrate on the one tokenized stream
    info = json.loads((tmp_path / "run" / "01-prune" / "step.json").read_text())
    assert info["step_kind"] == "prune" and "kind" not in info  # metrics.json's "kind" is the artifact's
    again = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in again.records] == ["cached"] * 3 and len(reads) == 6  # step.json + metrics.json


def test_the_step_entry_points_are_loaded_by_group(monkeypatch):
    from compress import catalog

    registered = catalog.step_configs()
    assert {"prune", "distill", "quantize"} <= set(registered) and "base" not in registered  # sources are `model:`
    if not catalog._entry_points():
        pytest.skip(f"this environment's gpt2-edge metadata predates the entry points: {catalog.REINSTALL}")
    assert catalog._entry_points()["export"].value == "export.step"  # the plan key names the entry point
    assert "export" in registered and registered["export"].kind == "export"  # loaded on the first look-up


def test_missing_step_entry_points_give_the_reinstall_hint(tmp_path, monkeypatch):
    from compress import catalog

    monkeypatch.setattr(catalog, "_entry_points", lambda: {})
    text = TINY_PLAN.replace("TOKENS", "3000") + "steps:\n  - exprt: {}\n"
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(PlanError) as e:
        load_plan(tmp_path / "plan.yaml")
    (problem,) = e.value.problems
    assert problem.startswith("steps[0].exprt: unknown step") and "pip install -e ." in problem
    assert "gpt2_edge.steps" in problem
