"""run_plan(): the run directory, one atomic directory per step, resume by content hash.

    runs/<name>/
      plan.resolved.yaml  manifest.json  report.md  metrics.csv  tensorboard/
      00-base/   model/  step.json  metrics.json  log.txt  DONE
      01-prune/  model/  step.json  metrics.json  log.txt  DONE

A step is built in a hidden temporary sibling and renamed into place after DONE is written, so a
directory without DONE is never used. Its hash covers its config and its input's hash; a rerun skips
every step whose hash still matches, so a killed run resumes at the step it was in (and long steps
resume from their own checkpoints under .work/). Changing only the eval settings re-measures steps
without re-running them.

Step 0 is the source step (compress/base_model.py: the plan's `model:` loaded or pretrained), run like
every other step. A step that changes weights (prune, distill, quantize) and ends with a perplexity
above `eval.max_ppl_ratio` times its input's stops the run before the next step, not marked DONE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress import distributed
from compress.base_model import source_step
from compress.data import source_text
from compress.errors import UserError
from compress.hashing import digest
from compress.models import load_model, load_tokenizer
from compress.plan import Plan, dump_plan
from compress.plan_check import check_steps
from compress.speculative_eval import attach_speculative
from compress.steps import StepConfig, StepContext, handler_for
from evalsuite.backends import BackendUnavailable, open_runner
from evalsuite.data import tokenize
from evalsuite.errors import EvalInputError
from evalsuite.metrics import KINDS, EvalSettings, evaluate, gpt2_facts
from evalsuite.report import write_report
from evalsuite.runner import TorchRunner
from evalsuite.size import bytes_on_disk

log = logging.getLogger(__name__)
BASE = "00-base"  # the source step's directory: the plan's model as the run's base
DONE = "DONE"


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


@dataclass
class _Done:
    """What a step left, in memory: the step.json and metrics.json just written or read."""

    record: StepRecord
    info: dict[str, Any]
    metrics: dict[str, Any] | None  # None on torchrun ranks > 0 (rank 0 measures)


@dataclass
class _Run:
    """State shared by the steps of one invocation."""

    plan: Plan
    run_dir: Path
    device: torch.device
    progress: bool
    cache: dict[str, Any] = field(default_factory=dict)  # tokenizer, tokenized streams: once per run
    base_ppl: float | None = None


def plan_steps(plan: Plan) -> list[StepConfig]:
    """The source step (the plan's `model:`) and then the plan's steps."""
    return [source_step(plan), *plan.steps]


def step_hashes(plan: Plan) -> list[str]:
    """Each step's content hash: its config and its input's hash (see StepConfig.content_hash)."""
    out: list[str] = []
    for step in plan_steps(plan):
        out.append(step.content_hash(out[-1] if out else None, plan))
    return out


def eval_hash(plan: Plan) -> str:
    # ppl_budget only changes how the report reads the metrics and max_ppl_ratio only what is accepted,
    # so neither re-measures anything; speculative is measured once for the pair (compress.speculative_eval).
    return digest(plan.data.eval.model_dump(mode="json"),
                  plan.eval.model_dump(mode="json", exclude={"ppl_budget", "max_ppl_ratio", "speculative"}), plan.device)


def step_names(plan: Plan) -> list[str]:
    return [f"{i:02d}-{s.slug()}" for i, s in enumerate(plan_steps(plan))]


# -- the run ---------------------------------------------------------------------------------------

def resolve_device(plan: Plan) -> torch.device:
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but torch sees no CUDA device")
    if plan.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(plan.device)


def dry_run(plan: Plan, run_dir: Path) -> list[str]:
    """What run_plan would do, one line per step, without loading any model: whether it is cached,
    what it does, and the model shape it leaves (as far as the plan tells); then the plan's notes."""
    checks = check_steps(plan)
    lines = []
    for name, h, step, state in zip(step_names(plan), step_hashes(plan), plan_steps(plan), checks.states):
        cached = "cached" if _is_current(run_dir / name, h) else "will run"
        shape = f"-> {state.shape}" if state.shape is not None else "-> shape known when it runs"
        q = f", int{state.quantized.bits}" if state.quantized else ""
        lines.append(f"{name:<22} {cached:<9} {step.describe()}  [{shape}{q}]")
    return lines + [f"note: {n}" for n in checks.notes]


def run_plan(plan: Plan, run_dir: str | Path, progress: bool = True) -> RunResult:
    """Run every step of the plan in run_dir (resuming what is already done) and write the report."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = distributed.init_from_env(resolve_device(plan))  # joins torchrun's process group, if any
    main = distributed.is_main_process()  # rank 0 writes every file; other ranks read them
    if main:
        (run_dir / "plan.resolved.yaml").write_text(dump_plan(plan))
    run = _Run(plan, run_dir, device, progress and main)
    manifest = _manifest(plan)
    if main:
        _write_json(run_dir / "manifest.json", manifest)

    done: list[_Done] = []
    current = base_dir = None  # the torch model the next step takes; the run's base model
    input_ppl = None  # the perplexity of `current`
    for name, h, step in zip(step_names(plan), step_hashes(plan), plan_steps(plan)):
        d = _run_step(run, name, h, step, input_dir=current, base_dir=base_dir, input_ppl=input_ppl)
        done.append(d)
        if d.info.get("model_dir"):
            current = run_dir / name / d.info["model_dir"]
            input_ppl = d.metrics.get("ppl") if d.metrics else None
        base_dir = base_dir or current
        if step.source and d.metrics:
            run.base_ppl = d.metrics.get("ppl")

    records = [d.record for d in done]
    if not main:  # rank 0 writes the report
        return RunResult(run_dir, run_dir / "report.md", records, [], time.perf_counter() - t0)
    rows = [d.metrics for d in done]
    if plan.eval.speculative is not None:  # one step as another's draft, after all of them are done
        attach_speculative(plan, run_dir, rows, str(run.device), lambda: _eval_ids(run))
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
    _write_json(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, report, records, rows, wall)


def _is_current(step_dir: Path, h: str) -> bool:
    try:
        return (step_dir / DONE).exists() and json.loads((step_dir / "step.json").read_text())["hash"] == h
    except (OSError, ValueError, KeyError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _run_step(run: _Run, name: str, h: str, step: StepConfig, input_dir: Path | None,
              base_dir: Path | None, input_ppl: float | None) -> _Done:
    """Under torchrun, rank 0 builds the step and the others wait; a `distributed` step (distill)
    is trained by every rank, rank 0 alone writing its directory."""
    if distributed.world_size() == 1:
        return _build_step(run, name, h, step, input_dir, base_dir, input_ppl)
    main = distributed.is_main_process()
    cached = distributed.broadcast_flag(main and _is_current(run.run_dir / name, h))
    result = None
    if main:
        result = _build_step(run, name, h, step, input_dir, base_dir, input_ppl)
    elif not cached and getattr(step, "distributed", False):
        _join_step(run, name, h, step, input_dir, base_dir)
    distributed.barrier()  # the step directory is in place before anyone reads it
    if result is None:  # written by rank 0: read it back
        info = _read_json(run.run_dir / name / "step.json")
        record = StepRecord(name, h, "cached" if cached else "ran", info.get("wall_s", 0.0), info.get("summary", ""))
        result = _Done(record, info, None)
    return result


def _context(run: _Run, name: str, h: str, out_dir: Path, input_dir: Path | None,
             base_dir: Path | None) -> StepContext:
    return StepContext(plan=run.plan, name=name, progress=run.progress, out_dir=out_dir,
                       work_dir=run.run_dir / ".work" / f"{name}-{h[:12]}", input_dir=input_dir,
                       base_dir=base_dir, device=run.device, log=logging.getLogger(f"compress.step.{name}"),
                       cache=run.cache)


def _join_step(run: _Run, name: str, h: str, step: StepConfig, input_dir: Path | None,
               base_dir: Path | None) -> None:
    """A non-zero rank's share of a distributed step: its outputs go to a scratch dir, then away."""
    scratch = run.run_dir / f".{name}.rank{distributed.rank()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        handler_for(step)(step, _context(run, name, h, scratch, input_dir, base_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_step(run: _Run, name: str, h: str, step: StepConfig, input_dir: Path | None,
                base_dir: Path | None, input_ppl: float | None) -> _Done:
    step_dir = run.run_dir / name
    if _is_current(step_dir, h):
        info = _read_json(step_dir / "step.json")
        metrics = _read_json(step_dir / "metrics.json")
        status = "cached"
        if metrics.get("eval_hash") != eval_hash(run.plan):
            metrics = _measure(run, name, step_dir, info, step.source)
            _write_json(step_dir / "metrics.json", metrics)
            status = "re-measured"
        _check_ppl_ratio(run, name, step, metrics, input_ppl, kept=f"{step_dir} (cached)")
        log.info("%s: %s (hash %s)", name, status, h[:12])
        return _Done(StepRecord(name, h, status, info.get("wall_s", 0.0), info.get("summary", "")), info, metrics)

    tmp = run.run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ctx = _context(run, name, h, tmp, input_dir, base_dir)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(tmp / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("compress", "export", "evalsuite")]
    for lg in loggers:
        lg.addHandler(handler)
    log.info("%s: running (hash %s)", name, h[:12])
    t0 = time.perf_counter()
    try:
        out = handler_for(step)(step, ctx)
        wall = time.perf_counter() - t0
        # "step_kind": the plan key of the step (metrics.json's "kind" is the artifact's: torch/onnx/trt)
        info = {"name": name, "hash": h, "step_kind": step.kind, "config": step.model_dump(mode="json"),
                "summary": out.summary, "model_dir": out.model_dir, "artifact": out.artifact,
                "backend": out.backend, "wall_s": wall, "info": out.info}
        _write_json(tmp / "step.json", info)
        metrics = _measure(run, name, tmp, info, step.source)
        _write_json(tmp / "metrics.json", metrics)
        _check_ppl_ratio(run, name, step, metrics, input_ppl, kept=str(tmp))
        (tmp / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    if step_dir.exists():
        shutil.rmtree(step_dir)  # a stale or half-written result of an earlier run
    tmp.rename(step_dir)
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    log.info("%s: done in %.1f s: %s", name, wall, out.summary)
    return _Done(StepRecord(name, h, "ran", wall, out.summary), info, metrics)


def _check_ppl_ratio(run: _Run, name: str, step: StepConfig, metrics: dict[str, Any], input_ppl: float | None,
                     kept: str) -> None:
    """eval.max_ppl_ratio: a step that changed weights must not leave a model far worse than its input."""
    ppl, limit = metrics.get("ppl"), run.plan.eval.max_ppl_ratio
    if not step.changes_weights or ppl is None or input_ppl is None:
        return
    ratio = ppl / input_ppl
    if not (math.isfinite(ratio) and ratio <= limit):
        raise UserError(f"{name}: ppl {ppl:.4g} is {ratio:.4g}x its input's {input_ppl:.4g}, above "
                        f"eval.max_ppl_ratio {limit:g}; the run stops here and {name} is not marked done "
                        f"(its result is kept in {kept}; raise eval.max_ppl_ratio to accept it)")


# -- measuring -------------------------------------------------------------------------------------

def _tokenizer(run: _Run):
    """The base model's tokenizer: every step is measured and sampled with the same one."""
    if "tokenizer" not in run.cache:
        run.cache["tokenizer"] = load_tokenizer(_base_model_dir(run))
    return run.cache["tokenizer"]


def _eval_ids(run: _Run) -> torch.Tensor:
    if "eval_ids" not in run.cache:
        run.cache["eval_ids"] = tokenize(source_text(run.plan.data.eval), _tokenizer(run))
    return run.cache["eval_ids"]


def _base_model_dir(run: _Run) -> Path:
    for d in (run.run_dir / BASE / "model", run.run_dir / f".{BASE}.tmp" / "model"):
        if (d / "config.json").exists():
            return d
    raise FileNotFoundError("base model directory is missing")


def _settings(plan: Plan) -> EvalSettings:
    e, samples = plan.data.eval, plan.eval.samples
    return EvalSettings(seq_len=e.seq_len, stride=e.stride, max_tokens=e.max_tokens,
                        perplexity=plan.eval.perplexity,
                        latency=plan.eval.latency.model_dump() if plan.eval.latency else None,
                        targets=tuple(plan.eval.targets),
                        sample_prompts=tuple(samples.prompts) if samples else (),
                        sample_tokens=samples.new_tokens if samples else 0,
                        sampling=samples.sampling() if samples else None)


def _data_label(plan: Plan) -> str:
    e = plan.data.eval
    return e.path or (f"hf:{e.hf}/{e.name or ''}:{e.split or 'test'}" if e.hf else f"{e.builtin}:{e.split or 'train'}")


def _measure(run: _Run, name: str, step_dir: Path, info: dict[str, Any], is_base: bool) -> dict[str, Any]:
    """metrics.json for one step directory."""
    rel = info.get("artifact") or info.get("model_dir")
    artifact = step_dir / rel
    backend = info.get("backend", "torch")
    config_dir = artifact if artifact.is_dir() else artifact.parent
    config = json.loads((config_dir / "config.json").read_text())
    facts = gpt2_facts(config, bytes_on_disk(config_dir, weights_only=True))
    if backend == "torch":
        runner = TorchRunner(load_model(artifact), run.device)
    else:
        try:
            runner = open_runner(backend, artifact, str(run.device))
        except BackendUnavailable as e:
            log.info("%s: %s; recording it as to be built on target", name, e)
            runner = None
    kind = KINDS.get(backend, backend)
    try:
        m = evaluate(runner, _eval_ids(run), facts, artifact, _settings(run.plan), step=name, kind=kind,
                     backend=backend, device=str(run.device), base_ppl=None if is_base else run.base_ppl,
                     data_label=_data_label(run.plan), progress=run.progress, tokenizer=_tokenizer(run))
    except EvalInputError as e:
        raise UserError(f"evaluating {name}: {e}") from None
    if is_base and m["ppl"] is not None:
        m["ppl_ratio_to_base"] = 1.0
    m["eval_hash"] = eval_hash(run.plan)
    m["summary"] = info.get("summary", "")
    m["step_wall_s"] = info.get("wall_s")  # the step's own work, when it ran; eval_wall_s is its measurement
    if runner is not None:
        log.info("%s: ppl %s, decode %s ms/token", name, f"{m['ppl']:.2f}" if m["ppl"] else "–",
                 f"{m['decode_ms_per_token']['p50']:.2f}" if m["decode_ms_per_token"] else "–")
    return m


# -- bookkeeping -----------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _manifest(plan: Plan) -> dict[str, Any]:
    import transformers

    from compress import __version__

    return {"name": plan.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpt2_edge": __version__,
            "git_sha": _git_sha(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "host": platform.node(), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads()}
