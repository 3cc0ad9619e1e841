"""--dry-run: what run_plan would do, step by step, with each step's estimated cost, without loading a
model or importing torch (a cost already measured on this machine comes from its cache: compress.cost)."""

from __future__ import annotations

import os
from pathlib import Path

from compress.cost import Rates, estimate_steps, machine_rates, summary_lines, with_vocab
from compress.hashing import digest
from compress.plan import Plan
from compress.plan_check import check_steps
from compress.planning import plan_steps, planned_steps, run_digests
from compress.run_dir import check_reuse, outputs_digest


def dry_run(plan: Plan, run_dir: Path, rates: Rates | None = None, threads: int | None = None,
            estimate: bool = False) -> list[str]:
    """What run_plan would do, one line per step, without loading any model: whether it is cached,
    what it does, and the model shape it leaves (as far as the plan tells), each followed by its
    estimated time, disk and peak memory on this machine (compress.cost; `rates` measured here unless
    given); then the totals, a warning per step over an hour, and the plan's notes."""
    checks = check_steps(plan)
    lines, made_from, base_outputs, rerun, cached = [], None, None, False, []
    planned = planned_steps(plan, run_digests(run_dir))
    for p, state in zip(planned, checks.states):
        reuse = check_reuse(run_dir / p.name, p.hash, made_from, verify=False)
        rerun = rerun or not reuse.ok
        cached.append(not rerun)
        if reuse.ok:
            outputs = outputs_digest(reuse.info["outputs"])
            base_outputs = base_outputs or outputs
            made_from = digest(outputs, base_outputs)
        status = "will run" if rerun else "cached"
        shape = f"-> {state.shape}" if state.shape is not None else "-> shape known when it runs"
        q = f", int{state.quantized.bits}" if state.quantized else ""
        lines.append(f"{p.name:<22} {status:<9} {p.step.describe()}  [{shape}{q}]")
    if estimate:
        if rates is None:
            works = [s.work() for s in plan_steps(plan)]
            base = with_vocab(checks.states[0], works[0].vocab_size).shape
            training = next((w for w in works if w.train_tokens), None)
            rates = machine_rates(base, threads or len(os.sched_getaffinity(0)), training)
        estimates = estimate_steps(plan_steps(plan), checks.states, rates, [p.name for p in planned], cached)
        lines = [line for pair in zip(lines, (e.line() for e in estimates)) for line in pair]
        lines += summary_lines(estimates, busy=rates.busy)
    return lines + [f"note: {n}" for n in checks.notes]
