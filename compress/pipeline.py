"""run_plan(): every step of a plan in its run directory, resuming what is already done.

The loop: for each step (the source step `00-base` first, compress/source_config.py), build its
StepInputs (only the plan inputs its class declares, texts and directories by content digest,
compress.step_inputs), hash them with its config and its input's hash, and reuse the step's directory
when compress.run_dir says it still holds (hash, its own files, its input), else run it. A killed run
resumes at the step it was in (long steps resume from their own checkpoints under .work/). Changing
only the eval settings or eval text re-measures steps without re-running them (compress.measure).
A step that changes weights and ends above `eval.max_ppl_ratio` times its input's perplexity is
refused by compress.gate before it is marked done.

The run directory's layout, records and lock: compress/run_dir.py.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress import distributed
from compress.catalog import handler_for
from compress.data import text_digest
from compress.errors import UserError
from compress.gate import check_ppl_ratio
from compress.hashing import digest
from compress.manifest import start_manifest
from compress.measure import Measurer, deployment_fields
from compress.plan import Plan, dump_plan
from compress.dry_run import dry_run  # noqa: F401 (re-exported: it was here)
from compress.planning import PlannedStep, planned_steps, run_digests
from compress.run_dir import (DONE, RECORD_FORMAT, STEP_JSON, RunLock, check_reuse, outputs_digest, read_json,
                              record_outputs, write_json)
from compress.speculative_eval import attach_speculative
from compress.step_api import StepContext
from evalsuite.report import write_report
from evalsuite.size import peak_rss_bytes, reset_peak_rss

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    name: str
    hash: str
    status: str  # "ran", "cached", "re-measured"
    wall_s: float
    summary: str


@dataclass
class RunResult:
    run_dir: Path
    report: Path
    records: list[StepRecord]
    metrics: list[dict[str, Any]]
    wall_s: float


def resolve_device(plan: Plan) -> torch.device:
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but torch sees no CUDA device")
    if plan.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(plan.device)


@dataclass
class _Run:
    """State shared by the steps of one invocation."""

    plan: Plan
    run_dir: Path
    device: torch.device
    progress: bool
    measurer: Measurer
    verify: bool  # re-read every reused step's files (off with --trust-cache)


def run_plan(plan: Plan, run_dir: str | Path, progress: bool = True, trust_cache: bool = False) -> RunResult:
    """Run every step of the plan in run_dir (resuming what is already done) and write the report."""
    run_dir = Path(run_dir)
    resolve_device(plan)  # a device that is not here fails before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    if not distributed.is_main_process():
        return _run(plan, run_dir, progress, trust_cache)
    with RunLock(run_dir):
        return _run(plan, run_dir, progress, trust_cache)


def _run(plan: Plan, run_dir: Path, progress: bool, trust_cache: bool) -> RunResult:
    t0 = time.perf_counter()
    device = distributed.init_from_env(resolve_device(plan))  # joins torchrun's process group, if any
    main = distributed.is_main_process()  # rank 0 writes every file; other ranks read them
    digests = run_digests(run_dir)
    steps = planned_steps(plan, digests)
    measurer = Measurer(plan, run_dir, device, text_digest(plan.data.eval, digests), progress and main)
    if main:
        digests.save()
        (run_dir / "plan.resolved.yaml").write_text(dump_plan(plan))
    run = _Run(plan, run_dir, device, progress and main, measurer, verify=not trust_cache)
    manifest = start_manifest(plan)
    if main:
        write_json(run_dir / "manifest.json", manifest)

    records, rows = [], []
    current = base_dir = None  # the torch model the next step takes; the run's base model
    input_ppl = made_from = base_outputs = None  # the ppl of `current`; what the next step is made from
    for p in steps:
        record, info, metrics = _run_step(run, p, current, base_dir, input_ppl, made_from)
        records.append(record)
        rows.append(metrics)
        outputs = outputs_digest(info.get("outputs", {}))
        base_outputs = base_outputs or outputs
        made_from = digest(outputs, base_outputs)  # the previous step's files and the base's (the teacher)
        if info.get("model_dir"):
            current = run_dir / p.name / info["model_dir"]
            input_ppl = metrics.get("ppl") if metrics else None
        base_dir = base_dir or current
        if p.step.source and metrics:
            measurer.base_ppl = metrics.get("ppl")

    if not main:  # rank 0 writes the report
        return RunResult(run_dir, run_dir / "report.md", records, [], time.perf_counter() - t0)
    if plan.eval.speculative is not None:  # one step as another's draft, after all of them are done
        attach_speculative(plan, run_dir, rows, str(device), measurer.eval_ids, measurer.eval_text_digest)
    wall = time.perf_counter() - t0
    compute = sum(r.wall_s for r in records)
    notes = [f"Run wall time: {wall:.1f} s for this invocation "
             f"({sum(r.status == 'ran' for r in records)} step(s) ran, "
             f"{sum(r.status == 'cached' for r in records)} cached); "
             f"{compute:.1f} s of step work in all."]
    report = write_report(run_dir, rows, title=f"gpt2-edge report: {plan.name}", notes=notes,
                          ppl_budget=plan.eval.ppl_budget)
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_s=wall,
                    steps=[r.__dict__ for r in records])
    write_json(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, report, records, rows, wall)


def _run_step(run: _Run, p: PlannedStep, input_dir: Path | None, base_dir: Path | None,
              input_ppl: float | None, made_from: str | None) -> tuple[StepRecord, dict, dict | None]:
    """Under torchrun, rank 0 builds the step and the others wait; a `distributed` step (distill)
    is trained by every rank, rank 0 alone writing its directory."""
    if distributed.world_size() == 1:
        return _build_step(run, p, input_dir, base_dir, input_ppl, made_from)
    main = distributed.is_main_process()
    reusable = main and check_reuse(run.run_dir / p.name, p.hash, made_from, run.verify).ok
    cached = distributed.broadcast_flag(reusable)
    if main:
        result = _build_step(run, p, input_dir, base_dir, input_ppl, made_from)
    elif not cached and getattr(p.step, "distributed", False):
        _join_step(run, p, input_dir, base_dir)
    distributed.barrier()  # the step directory is in place before anyone reads it
    if main:
        return result
    info = read_json(run.run_dir / p.name / STEP_JSON)  # written by rank 0
    return StepRecord(p.name, p.hash, "cached" if cached else "ran", info.get("wall_s", 0.0),
                      info.get("summary", "")), info, None


def _context(run: _Run, p: PlannedStep, out_dir: Path, input_dir: Path | None, base_dir: Path | None) -> StepContext:
    return StepContext(inputs=p.inputs, name=p.name, progress=run.progress, out_dir=out_dir,
                       work_dir=run.run_dir / ".work" / f"{p.name}-{p.hash[:12]}", input_dir=input_dir,
                       base_dir=base_dir, device=run.device, log=logging.getLogger(f"compress.step.{p.name}"),
                       cache=run.measurer.cache)


def _join_step(run: _Run, p: PlannedStep, input_dir: Path | None, base_dir: Path | None) -> None:
    """A non-zero rank's share of a distributed step: its outputs go to a scratch dir, then away."""
    scratch = run.run_dir / f".{p.name}.rank{distributed.rank()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        handler_for(p.step)(p.step, _context(run, p, scratch, input_dir, base_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_step(run: _Run, p: PlannedStep, input_dir: Path | None, base_dir: Path | None,
                input_ppl: float | None, made_from: str | None) -> tuple[StepRecord, dict, dict]:
    step_dir = run.run_dir / p.name
    reuse = check_reuse(step_dir, p.hash, made_from, run.verify)
    if reuse.ok:
        return _reuse_step(run, p, step_dir, reuse.info, input_ppl)
    if reuse.why:
        log.warning("%s: not reused, %s; running it again", p.name, reuse.why)

    tmp = run.run_dir / f".{p.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ctx = _context(run, p, tmp, input_dir, base_dir)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(tmp / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("compress", "export", "evalsuite")]
    for lg in loggers:
        lg.addHandler(handler)
    log.info("%s: running (hash %s)", p.name, p.hash[:12])
    t0 = time.perf_counter()
    peak_since = "step start" if reset_peak_rss() else "process start"  # else the running peak: said so
    try:
        out = handler_for(p.step)(p.step, ctx)
        wall = time.perf_counter() - t0
        # "step_kind": the plan key of the step (metrics.json's "kind" is the artifact's: torch/onnx/trt)
        info = {"format": RECORD_FORMAT, "name": p.name, "hash": p.hash, "step_kind": p.step.kind,
                "config": p.step.model_dump(mode="json"), "inputs": p.inputs.key(), "summary": out.summary,
                "model_dir": out.model_dir, "artifact": out.artifact, "backend": out.backend, "wall_s": wall,
                "info": out.info, "made_from": made_from, "outputs": record_outputs(tmp),
                "peak_rss_bytes": peak_rss_bytes(), "peak_rss_since": peak_since}
        write_json(tmp / STEP_JSON, info)
        metrics = run.measurer.measure(p.name, tmp, info, p.step.source)
        write_json(tmp / "metrics.json", metrics)
        check_ppl_ratio(p.name, p.step, metrics, input_ppl, run.plan.eval.max_ppl_ratio, kept=str(tmp))
        (tmp / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    if step_dir.exists():
        shutil.rmtree(step_dir)  # a stale or half-written result of an earlier run
    tmp.rename(step_dir)
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    log.info("%s: done in %.1f s: %s", p.name, wall, out.summary)
    return StepRecord(p.name, p.hash, "ran", wall, out.summary), info, metrics


def _reuse_step(run: _Run, p: PlannedStep, step_dir: Path, info: dict, input_ppl: float | None
                ) -> tuple[StepRecord, dict, dict]:
    try:
        metrics = read_json(step_dir / "metrics.json")
    except (OSError, ValueError):
        metrics = {}
    status = "cached"
    if metrics.get("eval_hash") != run.measurer.eval_hash:
        metrics = run.measurer.measure(p.name, step_dir, info, p.step.source)
        write_json(step_dir / "metrics.json", metrics)
        status = "re-measured"
    elif "runtime" not in metrics:  # measured before metrics carried the deployment facts: add them, no re-measure
        metrics.update(deployment_fields(info))
        write_json(step_dir / "metrics.json", metrics)
    check_ppl_ratio(p.name, p.step, metrics, input_ppl, run.plan.eval.max_ppl_ratio, kept=f"{step_dir} (cached)")
    log.info("%s: %s (hash %s)", p.name, status, p.hash[:12])
    return StepRecord(p.name, p.hash, status, info.get("wall_s", 0.0), info.get("summary", "")), info, metrics
