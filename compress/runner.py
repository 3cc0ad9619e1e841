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
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from compress.data import source_text
from compress.errors import UserError
from compress.models import is_local_source, load_model, load_tokenizer, save_model
from compress.plan import Plan, PretrainModel, dump_plan
from compress.speculative_eval import attach_speculative
from compress.steps import StepConfig, StepContext, StepOutput, handler_for
from evalsuite.backends import BackendUnavailable, open_runner
from evalsuite.data import tokenize
from evalsuite.errors import EvalInputError
from evalsuite.metrics import KINDS, EvalSettings, evaluate, gpt2_facts
from evalsuite.report import write_report
from evalsuite.runner import TorchRunner
from evalsuite.size import bytes_on_disk

log = logging.getLogger(__name__)
BASE = "00-base"
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
class _Run:
    """State shared by the steps of one invocation."""

    plan: Plan
    run_dir: Path
    device: torch.device
    progress: bool
    cache: dict[str, Any] = field(default_factory=dict)


# -- hashing ---------------------------------------------------------------------------------------

def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _dir_digest(path: Path) -> str:
    """Content hash of a checkpoint directory (file names and bytes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def base_hash(plan: Plan) -> str:
    model = plan.model.model_dump(mode="json") if isinstance(plan.model, PretrainModel) else plan.model
    content = _dir_digest(Path(plan.model)) if isinstance(plan.model, str) and is_local_source(plan.model) else None
    train = plan.data.train.model_dump(mode="json") if plan.data.train and isinstance(plan.model, PretrainModel) else None
    tok = _dir_digest(Path(plan.tokenizer)) if plan.tokenizer else None
    return _digest("base", model, content, train, tok, plan.seed)


def step_hash(prev: str, step: StepConfig, plan: Plan) -> str:
    train = plan.data.train.model_dump(mode="json") if plan.data.train else None
    return _digest(prev, step.kind, step.model_dump(mode="json"), train, plan.seed)


def eval_hash(plan: Plan) -> str:
    # ppl_budget only changes how the report reads the metrics, so it re-measures nothing; speculative
    # is measured once for the pair (compress.speculative_eval), not per step.
    return _digest(plan.data.eval.model_dump(mode="json"),
                   plan.eval.model_dump(mode="json", exclude={"ppl_budget", "speculative"}), plan.device)


def step_names(plan: Plan) -> list[str]:
    return [BASE] + [f"{i:02d}-{s.slug()}" for i, s in enumerate(plan.steps, 1)]


# -- the run ---------------------------------------------------------------------------------------

def resolve_device(plan: Plan) -> torch.device:
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but torch sees no CUDA device")
    if plan.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(plan.device)


def dry_run(plan: Plan, run_dir: Path) -> list[str]:
    """What run_plan would do, one line per step, without loading any model."""
    lines = []
    h = base_hash(plan)
    names = step_names(plan)
    base_desc = (f"pretrain {plan.model.pretrain.n_layer}x{plan.model.pretrain.n_embd} on data.train "
                 f"for {plan.model.pretrain.tokens:,} tokens" if isinstance(plan.model, PretrainModel)
                 else f"load {plan.model}")
    for name, desc, step in [(names[0], base_desc, None)] + [
            (n, s.describe(), s) for n, s in zip(names[1:], plan.steps)]:
        if step is not None:
            h = step_hash(h, step, plan)
        state = "cached" if _is_current(run_dir / name, h) else "will run"
        lines.append(f"{name:<22} {state:<9} {desc}")
    return lines


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

    records: list[StepRecord] = []
    names = step_names(plan)
    h = base_hash(plan)
    records.append(_run_step(run, names[0], h, None, input_dir=None))
    base_dir = run_dir / BASE / "model"
    current = base_dir
    for name, step in zip(names[1:], plan.steps):
        h = step_hash(h, step, plan)
        rec = _run_step(run, name, h, step, input_dir=current, base_dir=base_dir)
        records.append(rec)
        info = json.loads((run_dir / name / "step.json").read_text())
        if info.get("model_dir"):
            current = run_dir / name / info["model_dir"]

    if not main:  # rank 0 writes the report
        return RunResult(run_dir, run_dir / "report.md", records, [], time.perf_counter() - t0)
    rows = [json.loads((run_dir / n / "metrics.json").read_text()) for n in names]
    if plan.eval.speculative is not None:  # one step as another's draft, after all of them are done
        attach_speculative(plan, run_dir, rows, str(device), lambda: _eval_ids(run))
    wall = time.perf_counter() - t0
    compute = sum(json.loads((run_dir / n / "step.json").read_text()).get("wall_s", 0.0) for n in names)
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


def _run_step(run: _Run, name: str, h: str, step: StepConfig | None, input_dir: Path | None,
              base_dir: Path | None = None) -> StepRecord:
    """Under torchrun, rank 0 builds the step and the others wait; a `distributed` step (distill)
    is trained by every rank, rank 0 alone writing its directory."""
    if distributed.world_size() == 1:
        return _build_step(run, name, h, step, input_dir, base_dir)
    main = distributed.is_main_process()
    cached = distributed.broadcast_flag(main and _is_current(run.run_dir / name, h))
    record = None
    if main:
        record = _build_step(run, name, h, step, input_dir, base_dir)
    elif not cached and getattr(step, "distributed", False):
        _join_step(run, name, h, step, input_dir, base_dir)
    distributed.barrier()  # the step directory is in place before anyone reads it
    if record is None:
        info = json.loads((run.run_dir / name / "step.json").read_text())
        record = StepRecord(name, h, "cached" if cached else "ran", info.get("wall_s", 0.0), info.get("summary", ""))
    return record


def _join_step(run: _Run, name: str, h: str, step: StepConfig, input_dir: Path | None,
               base_dir: Path | None) -> None:
    """A non-zero rank's share of a distributed step: its outputs go to a scratch dir, then away."""
    scratch = run.run_dir / f".{name}.rank{distributed.rank()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    ctx = StepContext(plan=run.plan, name=name, progress=run.progress, out_dir=scratch,
                      work_dir=run.run_dir / ".work" / f"{name}-{h[:12]}", input_dir=input_dir,
                      base_dir=base_dir, device=run.device, log=logging.getLogger(f"compress.step.{name}"))
    try:
        handler_for(step)(step, ctx)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_step(run: _Run, name: str, h: str, step: StepConfig | None, input_dir: Path | None,
                base_dir: Path | None = None) -> StepRecord:
    step_dir = run.run_dir / name
    if _is_current(step_dir, h):
        info = json.loads((step_dir / "step.json").read_text())
        status = "cached"
        if json.loads((step_dir / "metrics.json").read_text()).get("eval_hash") != eval_hash(run.plan):
            _write_json(step_dir / "metrics.json", _measure(run, name, step_dir, info))
            status = "re-measured"
        log.info("%s: %s (hash %s)", name, status, h[:12])
        return StepRecord(name, h, status, info.get("wall_s", 0.0), info.get("summary", ""))

    tmp = run.run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    work = run.run_dir / ".work" / f"{name}-{h[:12]}"
    work.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(tmp / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("compress", "export", "evalsuite")]
    for lg in loggers:
        lg.addHandler(handler)
    log.info("%s: running (hash %s)", name, h[:12])
    t0 = time.perf_counter()
    try:
        if step is None:
            out = _build_base(run, tmp, work)
        else:
            ctx = StepContext(plan=run.plan, name=name, progress=run.progress, out_dir=tmp, work_dir=work,
                              input_dir=input_dir, base_dir=base_dir, device=run.device,
                              log=logging.getLogger(f"compress.step.{name}"))
            out = handler_for(step)(step, ctx)
        wall = time.perf_counter() - t0
        info = {"name": name, "hash": h, "kind": step.kind if step else "base",
                "config": step.model_dump(mode="json") if step else None, "summary": out.summary,
                "model_dir": out.model_dir, "artifact": out.artifact, "backend": out.backend,
                "wall_s": wall, "info": out.info}
        _write_json(tmp / "step.json", info)
        _write_json(tmp / "metrics.json", _measure(run, name, tmp, info))
        (tmp / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    if step_dir.exists():
        shutil.rmtree(step_dir)  # a stale or half-written result of an earlier run
    tmp.rename(step_dir)
    shutil.rmtree(work, ignore_errors=True)
    log.info("%s: done in %.1f s: %s", name, wall, out.summary)
    return StepRecord(name, h, "ran", wall, out.summary)


def _build_base(run: _Run, out_dir: Path, work_dir: Path) -> StepOutput:
    plan = run.plan
    if isinstance(plan.model, PretrainModel):
        from compress.pretrain import gpt2_config, pretrain, train_tokenizer, total_steps

        cfg = plan.model.pretrain
        text = source_text(plan.data.train)
        if plan.tokenizer or isinstance(cfg.tokenizer, str):
            tokenizer = load_tokenizer(plan.tokenizer or cfg.tokenizer)
        else:
            log.info("training a %d-token byte-level BPE tokenizer on data.train", cfg.tokenizer.vocab_size)
            tokenizer = train_tokenizer(text, cfg.tokenizer)
        train_ids = tokenize(text, tokenizer)
        held_ids = tokenize(source_text(plan.data.eval), tokenizer)
        config = gpt2_config(cfg, len(tokenizer), tokenizer.eos_token_id)
        model = pretrain(cfg, config, train_ids, held_ids, checkpoint_dir=work_dir / "checkpoint",
                         tensorboard_dir=run.run_dir / "tensorboard" / BASE, device=run.device,
                         progress=run.progress)
        save_model(model.cpu(), out_dir / "model", tokenizer)
        summary = (f"pretrained {cfg.n_layer}x{cfg.n_embd} GPT-2 (vocab {len(tokenizer)}) for "
                   f"{total_steps(cfg) * cfg.batch_size * cfg.grad_accum * cfg.seq_len:,} tokens "
                   f"on {train_ids.numel():,}-token data.train")
        return StepOutput(summary=summary, model_dir="model", info={"train_tokens": train_ids.numel()})
    model = load_model(plan.model)
    tokenizer = load_tokenizer(plan.tokenizer or plan.model)
    save_model(model, out_dir / "model", tokenizer)
    return StepOutput(summary=f"loaded {plan.model} (fp32)", model_dir="model")


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
                        sample_tokens=samples.new_tokens if samples else 0)


def _data_label(plan: Plan) -> str:
    e = plan.data.eval
    return e.path or (f"hf:{e.hf}/{e.name or ''}:{e.split or 'test'}" if e.hf else f"{e.builtin}:{e.split or 'train'}")


def _measure(run: _Run, name: str, step_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
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
    base_ppl = None
    if name != BASE:
        base_ppl = json.loads((run.run_dir / BASE / "metrics.json").read_text()).get("ppl")
    kind = KINDS.get(backend, backend)
    try:
        m = evaluate(runner, _eval_ids(run), facts, artifact, _settings(run.plan), step=name, kind=kind,
                     backend=backend, device=str(run.device), base_ppl=base_ppl,
                     data_label=_data_label(run.plan), progress=run.progress, tokenizer=_tokenizer(run))
    except EvalInputError as e:
        raise UserError(f"evaluating {name}: {e}") from None
    if name == BASE and m["ppl"] is not None:
        m["ppl_ratio_to_base"] = 1.0
    m["eval_hash"] = eval_hash(run.plan)
    m["summary"] = info.get("summary", "")
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
