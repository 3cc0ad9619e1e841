"""The search's outputs: trials.json / trials.csv, the Pareto front (pareto.md, pareto.png), the
winner and the one line that says why, and best.plan.yaml (the winner as an ordinary plan)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.run_dir import write_json
from compress.search.config import SearchConfig

CSV_FIELDS = ("id", "label", "ppl", "ppl_ratio", "mb", "tokens_per_s", "predicted_mb", "predicted_kl",
              "projected_tokens_per_s", "measured_tokens_per_s", "ran", "cpu_s", "wall_s", "within_budget", "pareto")


class SearchBudgetError(UserError):
    """No candidate meets the budget: the message lists the closest ones (exit 2)."""


def speed(t: dict[str, Any], cfg: SearchConfig) -> float:
    """Tokens/s the budget and objective read: measured on host when measured, else the search's own
    roofline projection from the exact bytes (compress/search/sizing.py; the torch runner's metrics count
    a quantized tied head's rebuilt float table as looked-up bytes, so their projection is not used)."""
    if cfg.target == "host" and t.get("measured_tokens_per_s"):
        return float(t["measured_tokens_per_s"])
    return float(t["candidate"]["projected_tokens_per_s"])


def shortfalls(t: dict[str, Any], cfg: SearchConfig) -> list[str]:
    """What of the budget a measured trial misses (empty: within budget)."""
    b, out = cfg.budget, []
    if b.max_mb is not None and t["mb"] > b.max_mb:
        out.append(f"{t['mb']:.2f} MB > {b.max_mb:g} MB")
    if b.max_ppl_ratio is not None and not t["ppl_ratio"] <= b.max_ppl_ratio:
        out.append(f"ppl {t['ppl_ratio']:.3f}x > {b.max_ppl_ratio:g}x")
    if b.min_tokens_per_s is not None and speed(t, cfg) < b.min_tokens_per_s:
        out.append(f"{speed(t, cfg):.0f} tokens/s < {b.min_tokens_per_s:g}")
    return out


def pareto(trials: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    """Trials no other trial beats on ppl, size and speed at once."""
    def beats(a, b) -> bool:
        ge = a["ppl"] <= b["ppl"] and a["mb"] <= b["mb"] and speed(a, cfg) >= speed(b, cfg)
        return ge and (a["ppl"] < b["ppl"] or a["mb"] < b["mb"] or speed(a, cfg) > speed(b, cfg))
    ok = [t for t in trials if t.get("ppl") is not None and math.isfinite(t["ppl"])]
    return sorted((t for t in ok if not any(beats(o, t) for o in ok)), key=lambda t: t["mb"])


def winner(trials: list[dict[str, Any]], cfg: SearchConfig) -> dict[str, Any]:
    """The best measured trial within the budget by the objective; SearchBudgetError when none is."""
    inside = [t for t in trials if not shortfalls(t, cfg)]
    if not inside:
        closest = sorted(trials, key=lambda t: len(shortfalls(t, cfg)))[:3]
        raise SearchBudgetError(no_fit_message(cfg, [f"{t['label']}: {'; '.join(shortfalls(t, cfg))}"
                                                     for t in closest], measured=True))
    key = {"ppl": lambda t: (t["ppl"], t["mb"]), "size": lambda t: (t["mb"], t["ppl"]),
           "latency": lambda t: (-speed(t, cfg), t["ppl"])}[cfg.objective]
    return min(inside, key=key)


def no_fit_message(cfg: SearchConfig, closest: list[str], measured: bool) -> str:
    budget = ", ".join(f"{k} {v:g}" for k, v in cfg.budget.model_dump(exclude_none=True).items())
    what = "measured trial" if measured else "candidate (predicted size, projected speed)"
    return (f"search: no {what} meets the budget ({budget}) on {cfg.target}; closest: " + " | ".join(closest)
            + "; loosen the budget or widen search.space")


def reason(w: dict[str, Any], trials: list[dict[str, Any]], cfg: SearchConfig) -> str:
    inside = sum(not shortfalls(t, cfg) for t in trials)
    what = {"ppl": f"lowest perplexity ({w['ppl_ratio']:.3f}x base)", "size": f"smallest ({w['mb']:.2f} MB)",
            "latency": f"fastest ({speed(w, cfg):.0f} tokens/s on {cfg.target})"}[cfg.objective]
    return (f"{w['label']}: {what} of the {inside} of {len(trials)} measured trials within the budget, "
            f"at {w['mb']:.2f} MB, {w['ppl_ratio']:.3f}x base ppl, {speed(w, cfg):.0f} tokens/s on {cfg.target}")


def rows(trials: list[dict[str, Any]], front: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    ids = {t["id"] for t in front}
    return [{"id": t["id"], "label": t["label"], "ppl": t["ppl"], "ppl_ratio": t["ppl_ratio"], "mb": t["mb"],
             "tokens_per_s": speed(t, cfg), "predicted_mb": t["candidate"]["predicted_mb"],
             "predicted_kl": t["candidate"]["predicted_kl"], "projected_tokens_per_s": t["projected_tokens_per_s"],
             "measured_tokens_per_s": t["measured_tokens_per_s"], "ran": " ".join(t["ran"]),
             "cpu_s": t["cpu_s"], "wall_s": t["wall_s"], "within_budget": not shortfalls(t, cfg),
             "pareto": t["id"] in ids} for t in trials]


def is_mixed(t: dict[str, Any]) -> bool:
    return bool(t["candidate"]["quantize"].get("overrides"))


def same_size_rivals(trials: list[dict[str, Any]]) -> list[str]:
    """Table rows: each uniform dense trial beside the best mixed trial of its shape at its size or less
    (factorized trials are uniform too, but not the variant the mixed one replaces)."""
    out = []
    measured = [t for t in trials if t.get("ppl") is not None and math.isfinite(t["ppl"])]
    dense = [t for t in measured if not is_mixed(t) and not t["candidate"].get("factorize")]
    for u in sorted(dense, key=lambda t: t["mb"]):
        rivals = [m for m in measured if is_mixed(m) and m["mb"] <= u["mb"]
                  and m["candidate"]["shape_key"] == u["candidate"]["shape_key"]]
        if not rivals:
            continue
        m = min(rivals, key=lambda t: t["ppl"])
        verdict = "mixed better" if m["ppl"] < u["ppl"] else "uniform better or equal"
        out.append(f"| {u['label']} | {u['ppl']:.3f} ({u['ppl_ratio']:.4f}x) at {u['mb']:.2f} MB | {m['label']} | "
                   f"{m['ppl']:.3f} ({m['ppl_ratio']:.4f}x) at {m['mb']:.2f} MB | {verdict} |")
    return out


def misranked(trials: list[dict[str, Any]]) -> list[str]:
    """Pairs the prediction ordered one way and the measurement the other (predicted KL vs measured ppl),
    largest measured gap first: where the search was wrong."""
    measured = [t for t in trials if t.get("ppl") is not None and math.isfinite(t["ppl"])]
    pairs = [(a, b) for a in measured for b in measured
             if a["candidate"]["predicted_kl"] < b["candidate"]["predicted_kl"] and a["ppl"] > b["ppl"]]
    pairs.sort(key=lambda ab: ab[1]["ppl"] - ab[0]["ppl"])
    return [f"- predicted {a['label']} (KL {a['candidate']['predicted_kl']:.2e}) better than {b['label']} "
            f"(KL {b['candidate']['predicted_kl']:.2e}); measured ppl {a['ppl']:.3f} > {b['ppl']:.3f}"
            for a, b in pairs[:8]]


def write_outputs(search_dir: Path, trials: list[dict[str, Any]], cfg: SearchConfig, w: dict[str, Any] | None,
                  stages: dict[str, Any]) -> None:
    front = pareto(trials, cfg)
    table = rows(trials, front, cfg)
    write_json(search_dir / "trials.json", {"trials": trials, "stages": stages})
    with open(search_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(table)
    lines = [f"# Search on {cfg.target}: {cfg.objective} within "
             + (", ".join(f"{k} {v:g}" for k, v in cfg.budget.model_dump(exclude_none=True).items()) or "no budget"),
             "", f"Winner: {reason(w, trials, cfg)}" if w else "Winner: none within the budget", "",
             "| trial | what | ppl (x base) | MB | tokens/s | predicted MB | predicted KL | in budget | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["mb"]):
        lines.append(f"| {r['id']} | {r['label']} | {r['ppl']:.3f} ({r['ppl_ratio']:.3f}x) | {r['mb']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['predicted_mb']:.2f} | {r['predicted_kl']:.4f} | "
                     f"{'yes' if r['within_budget'] else 'no'} | {'*' if r['pareto'] else ''} |")
    rivals = same_size_rivals(trials)
    if rivals:
        lines += ["", "Mixed precision against each uniform variant, at its size or less:", "",
                  "| uniform | ppl at MB | best mixed at that size or less | ppl at MB | |", "|---|---|---|---|---|",
                  *rivals]
    wrong = misranked(trials)
    lines += ["", "Ranked wrong by the prediction:" if wrong else "The prediction ranked every measured pair right.",
              *([""] + wrong if wrong else [])]
    lines += ["", "Stage CPU seconds (this process): " + ", ".join(f"{k} {v:.1f}" for k, v in stages["cpu_s"].items())
              + "; wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages["wall_s"].items()), ""]
    (search_dir / "pareto.md").write_text("\n".join(lines))
    plot(search_dir / "pareto.png", table, cfg)


def plot(path: Path, table: list[dict[str, Any]], cfg: SearchConfig) -> None:
    """ppl ratio against MB, colour = tokens/s on the target, the front joined, the budget dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = ax.scatter([r["mb"] for r in table], [r["ppl_ratio"] for r in table],
                     c=[r["tokens_per_s"] for r in table], cmap="viridis", s=40)
    fig.colorbar(pts, ax=ax, label=f"decode tokens/s ({cfg.target})")
    front = sorted((r for r in table if r["pareto"]), key=lambda r: r["mb"])
    ax.plot([r["mb"] for r in front], [r["ppl_ratio"] for r in front], "k--", lw=0.8, label="Pareto front")
    if cfg.budget.max_mb:
        ax.axvline(cfg.budget.max_mb, ls=":", color="red", label="max_mb")
    if cfg.budget.max_ppl_ratio:
        ax.axhline(cfg.budget.max_ppl_ratio, ls=":", color="orange", label="max_ppl_ratio")
    ax.set_xlabel("weights (MB)")
    ax.set_ylabel("perplexity / base")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def best_plan_header(search_dir: Path, w: dict[str, Any], reason_line: str) -> str:
    trial_dir = search_dir / "trials" / w["id"]
    return (f"# The search's winner as an ordinary plan ({reason_line}).\n"
            f"# Its steps are finished in {trial_dir}: run it there and every step is a cache hit:\n"
            f"#   python -m compress.run best.plan.yaml --out {trial_dir}\n")
