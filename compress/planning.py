"""The plan as the runner sees it before anything runs: each step's directory name, declared inputs
and content hash (compress/step_inputs.py), and the local paths the plan reads (so that --out is
none of them). Shared by run_plan and --dry-run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.source_config import source_step
from compress.hashing import DigestCache
from compress.plan import Plan, step_names
from compress.run_dir import DIGESTS_FILE
from compress.step_inputs import StepInputs, inputs_for
from compress.step_api import StepConfig


@dataclass(frozen=True)
class PlannedStep:
    """One step as the runner sees it before running: where, what, with which inputs, under which hash."""

    name: str
    step: StepConfig
    inputs: StepInputs
    hash: str


def plan_steps(plan: Plan) -> list[StepConfig]:
    """The source step (the plan's `model:`) and then the plan's steps."""
    return [source_step(plan.model, plan.tokenizer), *plan.steps]


def planned_steps(plan: Plan, cache: DigestCache) -> list[PlannedStep]:
    """Every step with its declared inputs and content hash (its config, its inputs, its input's hash)."""
    out: list[PlannedStep] = []
    keys = ["model"] + [f"steps[{i}].{s.kind}" for i, s in enumerate(plan.steps)]
    for name, key, step in zip(step_names(plan), keys, plan_steps(plan)):
        inputs = inputs_for(plan, step, key, cache)
        out.append(PlannedStep(name, step, inputs, step.content_hash(out[-1].hash if out else None, inputs)))
    return out


def step_hashes(plan: Plan, run_dir: Path | None = None) -> list[str]:
    return [p.hash for p in planned_steps(plan, run_digests(run_dir))]


def run_digests(run_dir: Path | None) -> DigestCache:
    """The run directory's file-digest cache (in memory only when the directory does not exist yet)."""
    return DigestCache(run_dir / DIGESTS_FILE if run_dir is not None and run_dir.is_dir() else None)


def input_paths(plan: Plan, plan_file: Path | None = None) -> list[Path]:
    """Every local file or directory the plan reads: a run directory must not be, contain or sit inside one."""
    paths = [Path(d) for step in plan_steps(plan) for d in step.local_dirs().values()]
    paths += [Path(s.path) for s in (plan.data.train, plan.data.eval) if s is not None and s.path]
    return paths + ([Path(plan_file)] if plan_file else [])
