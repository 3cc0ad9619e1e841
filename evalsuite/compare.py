"""Two runs side by side: each run's table, then B / A ratios for the steps both have, and their best points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import EvalInputError
from evalsuite.report import load_run_metrics
from evalsuite.summary import DEFAULT_PPL_BUDGET, best_index, fmt, get, markdown_table, ratio, verdict

# (title, dotted key) of the metrics compared as B / A.
RATIOS = [("ppl", "ppl"), ("decode ms/token p50", "decode_ms_per_token.p50"), ("prefill ms p50", "prefill_ms.p50"),
          ("tokens/s", "tokens_per_s"), ("bytes on disk", "bytes_on_disk"), ("peak mem", "peak_mem_bytes")]


def load_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], float]:
    """A run's rows and its ppl budget (from plan.resolved.yaml; the default when absent)."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise EvalInputError(f"{run_dir}: no such run directory")
    rows = load_run_metrics(run_dir)
    if not rows:
        raise EvalInputError(f"{run_dir}: not a run directory (no finished step with metrics.json)")
    plan_file = run_dir / "plan.resolved.yaml"
    plan = yaml.safe_load(plan_file.read_text()) if plan_file.is_file() else None
    budget = get(plan, "eval.ppl_budget") if isinstance(plan, dict) else None
    return rows, float(budget or DEFAULT_PPL_BUDGET)


def ratio_table(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """Markdown table of B / A for each (label, row_a, row_b); below 1 means B is lower."""
    head = ["step (A → B)"] + [f"{t} B/A" for t, _ in RATIOS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, a, b in pairs:
        cells = [fmt(ratio(get(b, key), get(a, key)), "{:.3f}") for _, key in RATIOS]
        lines.append("| " + " | ".join([label] + cells) + " |")
    return "\n".join(lines)


def compare_runs(run_a: str | Path, run_b: str | Path) -> str:
    (rows_a, budget_a), (rows_b, budget_b) = load_run(run_a), load_run(run_b)
    out = [f"# A: {run_a}", "", verdict(rows_a, budget_a), "", markdown_table(rows_a, budget_a), "",
           f"# B: {run_b}", "", verdict(rows_b, budget_b), "", markdown_table(rows_b, budget_b), "",
           "# B / A (below 1: B is lower; for tokens/s higher is better, for the rest lower is)", ""]
    by_name_b = {r["step"]: r for r in rows_b}
    pairs = [(a["step"], a, by_name_b[a["step"]]) for a in rows_a if a["step"] in by_name_b]
    best_a, best_b = best_index(rows_a, budget_a), best_index(rows_b, budget_b)
    if best_a is not None and best_b is not None:
        pairs.append((f"best: {rows_a[best_a]['step']} → {rows_b[best_b]['step']}", rows_a[best_a], rows_b[best_b]))
    if not pairs:
        return "\n".join(out + ["(no step name in common and no best point in both runs)"])
    return "\n".join(out + [ratio_table(pairs)])
