"""Stage 3: a candidate as an ordinary plan, run by compress.pipeline in its own run directory.

    <search dir>/trials/<id>/   00-base/ 01-prune/ 02-distill/ 03-quantize-.../ 04-export-onnx/  trial.json
                                (a factorize step after the prune when the candidate is low-rank)

Every common prefix is computed once: before a trial runs, each of its steps that another trial (or
the base run) already finished under the same content hash (compress/planning.py) is hard-linked into
its directory, and compress.run_dir.check_reuse then accepts it as it accepts any cached step (same
hash, same files, same input). So one distillation serves every quantize variant of its shape, and
best.plan.yaml run with `--out` on the winner's directory is a pure cache hit. trial.json is written
last: a trial without it runs again (its finished steps are reused) after a kill.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from compress.hashing import digest
from compress.pipeline import run_plan
from compress.plan import Plan, load_plan
from compress.planning import planned_steps, run_digests
from compress.run_dir import DONE, STEP_JSON, read_json, write_json
from compress.search.candidates import Candidate
from compress.search.config import SearchConfig

log = logging.getLogger(__name__)
TRIAL_JSON = "trial.json"


def trial_steps(c: Candidate, cfg: SearchConfig) -> list[dict[str, Any]]:
    """prune -> factorize -> distill (healing a pruned or factorized model) -> quantize -> export, as plan
    step mappings."""
    space = cfg.search_space
    steps: list[dict[str, Any]] = []
    if c.prune is not None:
        steps.append({"prune": c.prune})
    if c.factorize is not None:
        steps.append({"factorize": c.factorize})
    if steps:
        d = space.distill
        if d.tokens:
            watch = {"eval_every": d.eval_every} if d.eval_tokens and d.eval_every else {}
            steps.append({"distill": {"teacher": "base", "tokens": d.tokens, "seq_len": d.seq_len,
                                      "batch_tokens": d.batch_tokens, "lr": d.lr, "warmup_steps": 4,
                                      "temperature": 1.0, "loss": {"kl": 1.0}, "eval_tokens": d.eval_tokens,
                                      **watch, "fused_head": True}})
    steps.append({"quantize": c.quantize})
    if space.export != "none":
        steps.append({"export": {"format": space.export}})
    return steps


def trial_plan_dict(plan: Plan, steps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The search plan with its search section replaced by the trial's steps (paths already absolute).
    Latency is measured only when the target is this machine; samples never (they rank nothing)."""
    out = plan.to_yaml_dict()
    out.pop("search", None)
    out["name"] = name
    out["eval"]["samples"] = None
    out["eval"]["targets"] = [plan.search.target]
    if plan.search.target != "host":
        out["eval"]["latency"] = None
    out["steps"] = steps
    return out


def trial_id(steps: list[dict[str, Any]]) -> str:
    return "t" + digest(steps)[:10]


def write_plan(path: Path, plan_dict: dict[str, Any], header: str = "") -> Path:
    path.write_text(header + yaml.safe_dump(plan_dict, sort_keys=False))
    return path


def step_store(search_dir: Path) -> dict[str, Path]:
    """{content hash: finished step directory} of every run directory under the search directory."""
    store: dict[str, Path] = {}
    for done in sorted(search_dir.glob("*/*/*/" + DONE)) + sorted(search_dir.glob("*/*/" + DONE)):
        try:
            store.setdefault(read_json(done.parent / STEP_JSON)["hash"], done.parent)
        except (OSError, ValueError, KeyError):
            continue
    return store


def share_prefix(plan: Plan, run_dir: Path, store: dict[str, Path]) -> int:
    """Hard-link into run_dir every step of the plan that the store has finished; the count linked."""
    linked = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in planned_steps(plan, run_digests(run_dir)):
        target, source = run_dir / p.name, store.get(p.hash)
        if source is None or (target / DONE).exists() or source.parent == run_dir:
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, copy_function=_link)
        linked += 1
    return linked


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy is as good, only bigger
        shutil.copy2(src, dst)


def _ranks_as_profiled(c: Candidate, run_dir: Path, records, kinds: list[str]) -> bool | None:
    """Whether the trial's factorize step chose the ranks stage 1 saw (its size prediction rests on them);
    None without factorize."""
    if c.factorize is None:
        return None
    step = next(r.name for r, kind in zip(records, kinds) if kind == "factorize")
    layers = read_json(run_dir / step / STEP_JSON)["info"]["layers"]
    return {n.removeprefix("transformer."): v["rank"] for n, v in layers.items()} == c.ranks


def run_trial(plan: Plan, c: Candidate, search_dir: Path, base_ppl: float, progress: bool) -> dict[str, Any]:
    """The trial's record (trial.json): its plan, measured numbers and what it cost; reused when present."""
    steps = trial_steps(c, plan.search)
    tid = trial_id(steps)
    run_dir = search_dir / "trials" / tid
    if (run_dir / TRIAL_JSON).exists():  # the same steps measured before; the prediction is this search's
        return read_json(run_dir / TRIAL_JSON) | {"label": c.label, "candidate": c.as_dict(), "reused": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = write_plan(run_dir / "trial.plan.yaml", trial_plan_dict(plan, steps, tid))
    trial = load_plan(plan_file)
    linked = share_prefix(trial, run_dir, step_store(search_dir))
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = run_plan(trial, run_dir, progress=progress)
    last = result.metrics[-1]
    kinds = ["model", *(s.kind for s in trial.steps)]  # records: the source step, then the plan's steps
    ran = [(r.name, kind) for r, kind in zip(result.records, kinds) if r.status == "ran"]
    record = {"id": tid, "label": c.label, "candidate": c.as_dict(), "steps": steps,
              "ran": [n for n, _ in ran], "ran_kinds": [k for _, k in ran], "linked": linked,
              "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
              "ppl": last.get("ppl"), "ppl_ratio": (last.get("ppl") or float("nan")) / base_ppl,
              "weight_bytes": last.get("weight_bytes"), "mb": (last.get("weight_bytes") or 0) / 1e6,
              "projected_tokens_per_s": (last.get("projected_decode_tokens_per_s") or {}).get(plan.search.target),
              "measured_tokens_per_s": last.get("tokens_per_s"), "artifact_step": result.records[-1].name,
              "factorize_ranks_as_profiled": _ranks_as_profiled(c, run_dir, result.records, kinds)}
    write_json(run_dir / TRIAL_JSON, record)
    return record | {"reused": False}
