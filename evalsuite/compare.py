"""Two runs side by side: each run's table, then B / A ratios for the steps both have, and their best points.

A perplexity ratio means something only when both runs scored the same tokens: the same tokenizer,
the same eval text, the same seq_len and stride. `compare_runs` checks that first and refuses
(EvalInputError, exit 2) when any differs, saying what; `force=True` prints the ratios anyway under
a loud NOT COMPARABLE line. Steps present in only one run are listed, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import EvalInputError
from evalsuite.report import load_run_metrics
from evalsuite.summary import DEFAULT_PPL_BUDGET, best_index, fmt, get, markdown_table, ratio, unreliable, verdict

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


def run_protocol(run_dir: str | Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's perplexities depend on: tokenizer fingerprint, eval text, seq_len, stride."""
    run_dir = Path(run_dir).expanduser()
    evals = [r["eval"] for r in rows if isinstance(r.get("eval"), dict)]
    first = evals[0] if evals else {}
    plan_file = run_dir / "plan.resolved.yaml"
    plan = yaml.safe_load(plan_file.read_text()) if plan_file.is_file() else None
    data = get(plan, "data.eval") if isinstance(plan, dict) else None
    if isinstance(data, dict):  # the text and how much of it; seq_len and stride are compared on their own
        data = {k: v for k, v in data.items() if k not in ("seq_len", "stride") and v is not None}
    return {"tokenizer": tokenizer_fingerprint(run_dir / rows[0]["step"] / "model"),
            "eval data": data if data else first.get("data"), "seq_len": first.get("seq_len"),
            "stride": first.get("stride"), "eval tokens": first.get("tokens_total")}


def tokenizer_fingerprint(model_dir: Path) -> str | None:
    """A short hash of the vocabulary and merges stored beside a model (None when there are none)."""
    vocab = merges = None
    if (model_dir / "tokenizer.json").is_file():
        model = json.loads((model_dir / "tokenizer.json").read_text()).get("model") or {}
        vocab, merges = model.get("vocab"), model.get("merges")
    elif (model_dir / "vocab.json").is_file():
        vocab = json.loads((model_dir / "vocab.json").read_text())
        merges_file = model_dir / "merges.txt"
        merges = merges_file.read_text().splitlines()[1:] if merges_file.is_file() else None
    if vocab is None:
        return None
    # merges are "a b" strings in merges.txt and in older tokenizer.json files, [a, b] pairs in newer ones
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges or []]
    blob = json.dumps([sorted(vocab.items()), merges], ensure_ascii=False).encode()
    return f"{len(vocab)} tokens, sha256 {hashlib.sha256(blob).hexdigest()[:12]}"


def protocol_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'what: A vs B' for every protocol field that differs (unknown on one side counts as different)."""
    return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]


def step_slot(name: str) -> tuple[str, str]:
    """(position, step kind) of a step directory name: '03-quantize-gptq-w4g32' -> ('03', 'quantize'), so
    that the same place of two plans is compared even when the method (and so the name) differs."""
    position, _, slug = name.partition("-")
    return position, slug.split("-")[0]


def _pair_label(a: str, b: str) -> str:
    return a if a == b else f"{a} vs {b}"


def compare_runs(run_a: str | Path, run_b: str | Path, force: bool = False) -> str:
    (rows_a, budget_a), (rows_b, budget_b) = load_run(run_a), load_run(run_b)
    differences = protocol_differences(run_protocol(run_a, rows_a), run_protocol(run_b, rows_b))
    if differences and not force:
        raise EvalInputError(f"{run_a} and {run_b} are not comparable: their perplexities were measured "
                             f"differently ({'; '.join(differences)}); rerun one with the other's tokenizer and "
                             "data.eval, or pass --force to print the ratios marked NOT COMPARABLE")
    out = [f"# A: {run_a}", "", verdict(rows_a, budget_a), "", markdown_table(rows_a, budget_a), "",
           f"# B: {run_b}", "", verdict(rows_b, budget_b), "", markdown_table(rows_b, budget_b), ""]
    if differences:
        out += ["**NOT COMPARABLE (--force): the runs measured perplexity differently: "
                + "; ".join(differences) + ". The ratios below mix different measurements.**", ""]
    out += ["# B / A (below 1: B is lower; for tokens/s higher is better, for the rest lower is)", ""]
    by_slot_b = {step_slot(r["step"]): r for r in rows_b}
    slots_a = {step_slot(r["step"]) for r in rows_a}
    only_a = [r["step"] for r in rows_a if step_slot(r["step"]) not in by_slot_b]
    only_b = [r["step"] for r in rows_b if step_slot(r["step"]) not in slots_a]
    pairs = [(_pair_label(a["step"], by_slot_b[step_slot(a["step"])]["step"]), a, by_slot_b[step_slot(a["step"])])
             for a in rows_a if step_slot(a["step"]) in by_slot_b]
    best_a, best_b = best_index(rows_a, budget_a), best_index(rows_b, budget_b)
    if best_a is not None and best_b is not None:
        pairs.append((f"best: {rows_a[best_a]['step']} → {rows_b[best_b]['step']}", rows_a[best_a], rows_b[best_b]))
    table = [ratio_table(pairs)] if pairs else ["(no step at the same place of both plans and no best point in both "
                                                "runs)"]
    noisy = [f"{label}" for label, a, b in pairs if unreliable(a) or unreliable(b)]
    if noisy:
        table.append(f"\nTimings not to be trusted in: {', '.join(noisy)} (a busy machine or runs that disagree: "
                     "see each run's report); their latency ratios are noise until measured again on a quiet machine.")
    unmatched = []
    if only_a:
        unmatched.append(f"Steps only in A (no ratio): {', '.join(only_a)}")
    if only_b:
        unmatched.append(f"Steps only in B (no ratio): {', '.join(only_b)}")
    return "\n".join(out + table + ([""] + unmatched if unmatched else []))
