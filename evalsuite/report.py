"""Turn the metrics of every step of a run into report.md and metrics.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"

# (column title, how to read it from a metrics dict, format)
COLUMNS: list[tuple[str, str, str]] = [
    ("step", "step", "{}"),
    ("backend", "backend", "{}"),
    ("device", "device", "{}"),
    ("params", "params", "{:,}"),
    ("bytes on disk", "bytes_on_disk", "bytes"),
    ("ppl", "ppl", "{:.2f}"),
    ("ppl / base", "ppl_ratio_to_base", "{:.3f}"),
    ("prefill ms p50", "prefill_ms.p50", "{:.1f}"),
    ("prefill ms p90", "prefill_ms.p90", "{:.1f}"),
    ("decode ms/tok p50", "decode_ms_per_token.p50", "{:.2f}"),
    ("decode ms/tok p90", "decode_ms_per_token.p90", "{:.2f}"),
    ("tokens/s", "tokens_per_s", "{:.1f}"),
    ("peak mem", "peak_mem_bytes", "bytes"),
]


def get(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    if spec == "bytes":
        return human_bytes(value)
    return spec.format(value)


def load_run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.json of every finished step (directories with DONE), in step order."""
    out = []
    for step_dir in sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and (p / "DONE").exists()):
        if (step_dir / METRICS_FILE).exists():
            out.append(json.loads((step_dir / METRICS_FILE).read_text()))
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    targets = sorted({t for r in rows for t in (r.get("projected_decode_tokens_per_s") or {})})
    head = [c[0] for c in COLUMNS] + [f"proj. tok/s {t}" for t in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [fmt(get(r, key), spec) for _, key, spec in COLUMNS]
        proj = r.get("projected_decode_tokens_per_s") or {}
        cells += [fmt(proj.get(t), "{:,.0f}") for t in targets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dir: Path, rows: list[dict[str, Any]], title: str, notes: list[str] = ()) -> Path:
    """report.md and metrics.csv in run_dir; returns the report's path."""
    run_dir = Path(run_dir)
    md = [f"# {title}", "", markdown_table(rows), ""]
    first_eval = next((r["eval"] for r in rows if r.get("eval")), None)
    if first_eval:
        md.append(f"Perplexity on {first_eval.get('data') or 'the eval text'}: {first_eval['tokens_scored']:,} "
                  f"tokens scored, windows of {first_eval['seq_len']} moved by {first_eval['stride']}.")
    lat = next((r["latency"] for r in rows if r.get("latency")), None)
    if lat:
        md.append(f"Latency: batch {lat['batch']}, prompt {lat['prompt']} tokens, {lat['new_tokens']} decode steps "
                  f"with KV cache, p50/p90 over {lat['repeats']} runs, {lat['threads']} threads.")
    md.append("Projected tok/s: memory-bandwidth roofline (weights + KV cache read per token), an upper "
              "bound, not a measurement.")
    md += [f"- {n}" for n in notes]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    write_csv(run_dir / "metrics.csv", rows)
    return run_dir / "report.md"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    flat = [_flatten(r) for r in rows]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(flat)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
