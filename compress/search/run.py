"""run_search(): the three stages of a plan's `search:` section, in one search directory.

    <out>/plan.resolved.yaml   the search plan as validated
    <out>/base/                the plan's model as an ordinary run (00-base: its perplexity, its files)
    <out>/profiles-<key>.json  stage 1 (compress/search/profiles.py)
    <out>/candidates.json      stage 2 (compress/search/candidates.py): every candidate, the chosen ones
    <out>/trials/<id>/         stage 3 (compress/search/trials.py): one ordinary run per chosen candidate
    <out>/trials.json|csv  pareto.md  pareto.png  best.plan.yaml  search.json   (compress/search/report.py)

A killed search resumes: the base run and every trial step are cached like any run's, the profiles
are read back by their key, a finished trial by its trial.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.data import source_text, text_digest
from compress.errors import UserError
from compress.model_shape import Shape
from compress.pipeline import run_plan
from compress.plan import Plan, dump_plan, parse_plan
from compress.planning import planned_steps, run_digests
from compress.run_dir import RunLock, write_json
from compress.search import candidates as cands
from compress.search.profiles import profiles
from compress.search.report import SearchBudgetError, best_plan_header, no_fit_message, reason, winner, write_outputs
from compress.search.trials import run_trial, trial_plan_dict, trial_steps, write_plan

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    run_dir: Path
    winner: dict[str, Any]
    reason: str
    trials: list[dict[str, Any]]
    best_plan: Path
    stages: dict[str, Any]


def run_search(plan: Plan, run_dir: str | Path, progress: bool = True) -> SearchResult:
    """Search the plan's space for the best model within its budget (see the module doc)."""
    if plan.search is None:
        raise ValueError("run_search needs a plan with a search: section")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        (run_dir / "plan.resolved.yaml").write_text(dump_plan(plan))
        return _search(plan, run_dir, progress)


def _search(plan: Plan, run_dir: Path, progress: bool) -> SearchResult:
    cfg = plan.search
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    base_plan = parse_plan(trial_plan_dict(plan, [], "base"))
    base = run_plan(base_plan, run_dir / "base", progress=progress)
    base_ppl = base.metrics[0]["ppl"]
    wall["base"], cpu["base"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    from compress.models import load_model, load_tokenizer
    from evalsuite.data import tokenize

    model_dir = run_dir / "base" / "00-base" / "model"
    model = load_model(model_dir).eval()
    shape = Shape.of_config(model.config)
    train_ids = tokenize(source_text(plan.data.train), load_tokenizer(model_dir))
    space = cfg.search_space
    unfit = cands.unfit_factorize(shape, space)
    if unfit:
        raise UserError(unfit)
    groups = space.quantize.group_sizes
    precisions = sorted({(b, g) for b in (*space.quantize.bits, 4, 8) for g in groups})
    key_parts = [planned_steps(base_plan, run_digests(run_dir / "base"))[0].hash,
                 text_digest(plan.data.train, run_digests(run_dir))]
    prof = profiles(run_dir, key_parts, model, train_ids, cfg.profile, precisions,
                    cands.prune_configs(shape, space), space.factorize_settings())
    del model
    wall["profiles"], cpu["profiles"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    every = cands.candidates(shape, cfg, prof)
    chosen, closest = cands.choose(every, cfg)
    write_json(run_dir / "candidates.json", {"all": [c.as_dict() for c in every],
                                             "chosen": [c.label for c in chosen]})
    wall["candidates"], cpu["candidates"] = time.perf_counter() - t0, time.process_time() - c0
    if not chosen:
        raise SearchBudgetError(no_fit_message(cfg, [f"{c.label}: {c.bytes / 1e6:.2f} MB, {c.tokens_per_s:.0f} tokens/s"
                                                     for c in closest], measured=False))

    t0, c0 = time.perf_counter(), time.process_time()
    trials = []
    for i, c in enumerate(chosen, 1):
        log.info("search: trial %d/%d: %s", i, len(chosen), c.label)
        trials.append(run_trial(plan, c, run_dir, base_ppl, progress))
    wall["trials"], cpu["trials"] = time.perf_counter() - t0, time.process_time() - c0
    stages = {"cpu_s": cpu, "wall_s": wall, "profiles_reused": prof["reused"], "profile_cpu_s": prof["cpu_s"],
              "candidates": len(every), "trials": len(trials), "base_ppl": base_ppl}
    try:
        best = winner(trials, cfg)
    except SearchBudgetError:
        write_outputs(run_dir, trials, cfg, None, stages)
        raise
    line = reason(best, trials, cfg)
    write_outputs(run_dir, trials, cfg, best, stages)
    best_dict = trial_plan_dict(plan, best["steps"], plan.name + "-best")
    best_plan = write_plan(run_dir / "best.plan.yaml", best_dict, best_plan_header(run_dir, best, line))
    write_json(run_dir / "search.json", {"winner": best["id"], "reason": line, **stages})
    log.info("search: %s", line)
    return SearchResult(run_dir, best, line, trials, best_plan, stages)


__all__ = ["SearchResult", "run_search", "trial_steps"]
