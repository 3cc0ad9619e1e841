"""Turn the metrics of every step of a run into the report a user reads:

    report.md    the table, the best point, what changed per step, sample generations, targets
    report.html  the same with the plot inline, one self-contained file (no external CSS/JS/images)
    pareto.png   perplexity vs decode latency (evalsuite.plot)
    metrics.csv  every metric of every step, flattened
    tensorboard/metrics/  one scalar per metric, the step index on the x axis

What "best" and "Pareto front" mean is defined in evalsuite.summary.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from evalsuite.html_page import render_html
from evalsuite.speculative_report import speculative_lines
from evalsuite.summary import (DEFAULT_PPL_BUDGET, SHIP_HEAD, fmt, get, human_bytes, legend,  # noqa: F401
                               markdown_table, protocol_lines, sample_prompts, sample_text, sampling_line, ship_table,
                               target_rows, verdict, wall_rows)

METRICS_FILE = "metrics.json"
# free text and nested tables, shown in the report; a CSV cell is no place for them
CSV_SKIP = ("samples", "speculative")
# (tag, dotted key) of the scalars written to TensorBoard; projections are added per target.
SCALARS = [("ppl", "ppl"), ("ppl_ratio_to_base", "ppl_ratio_to_base"), ("params", "params"),
           ("bytes_on_disk", "bytes_on_disk"), ("prefill_ms/p50", "prefill_ms.p50"),
           ("prefill_ms/p90", "prefill_ms.p90"), ("decode_ms_per_token/p50", "decode_ms_per_token.p50"),
           ("decode_ms_per_token/p90", "decode_ms_per_token.p90"), ("tokens_per_s", "tokens_per_s"),
           ("peak_mem_bytes", "peak_mem_bytes"),
           ("host_roofline/measured_over_projected", "host_roofline.measured_over_projected")]


def load_run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.json of every finished step (directories with DONE), in step order."""
    out = []
    for step_dir in sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and (p / "DONE").exists()):
        if (step_dir / METRICS_FILE).exists():
            out.append(json.loads((step_dir / METRICS_FILE).read_text()))
    return out


def write_report(run_dir: Path, rows: list[dict[str, Any]], title: str, notes: list[str] = (),
                 ppl_budget: float = DEFAULT_PPL_BUDGET, tensorboard: bool = True) -> Path:
    """Write every report file into run_dir; returns the path of report.md."""
    from evalsuite.plot import write_pareto  # matplotlib takes ~1 s to import; only this needs it

    run_dir = Path(run_dir)
    svg = write_pareto(rows, run_dir / "pareto.png", title, ppl_budget)
    write_atomic(run_dir / "report.md", markdown_report(rows, title, notes, ppl_budget))
    write_atomic(run_dir / "report.html", render_html(rows, title, svg, notes, ppl_budget))
    write_csv(run_dir / "metrics.csv", rows)
    if tensorboard:
        write_tensorboard(run_dir / "tensorboard" / "metrics", rows)
    return run_dir / "report.md"


def markdown_report(rows: list[dict[str, Any]], title: str, notes: list[str] = (),
                    ppl_budget: float = DEFAULT_PPL_BUDGET) -> str:
    md = [f"# {title}", "", verdict(rows, ppl_budget), "", markdown_table(rows, ppl_budget), "",
          legend(ppl_budget), "", "![perplexity vs decode latency](pareto.png)"]
    md += _markdown_ship(rows, ppl_budget)
    md += ["", "## What each step did", ""]
    md += [f"- **{r['step']}**: {r.get('summary') or '(no summary)'}" for r in rows]
    md += _markdown_wall(rows)
    md += ["", "## How it was measured", ""] + [f"- {line}" for line in protocol_lines(rows)]
    md += _markdown_samples(rows)
    md += speculative_lines(rows)
    targets = target_rows(rows)
    if targets:
        md += ["", "## Target devices (projections use their published memory bandwidth)", "",
               "| target | device | GB/s | INT8 TOPS | FP16 TFLOPS | source |", "|---|---|---|---|---|---|"]
        md += ["| " + " | ".join(t) + " |" for t in targets]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(md) + "\n"


def _markdown_ship(rows: list[dict[str, Any]], ppl_budget: float) -> list[str]:
    cells = ship_table(rows, ppl_budget)
    if not cells:
        return []
    md = ["", "## What to ship, per target device", "",
          f"Per device of eval.targets: the artifact whose runtime runs there with the highest decode tokens/s "
          f"(measured on the host, projected elsewhere) and perplexity within {ppl_budget:.2f}x the base's; "
          "artifacts that run there but could not be measured here follow it with their projection.", "",
          "| " + " | ".join(SHIP_HEAD) + " |", "|" + "---|" * len(SHIP_HEAD)]
    return md + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row, _ in cells]


def _markdown_wall(rows: list[dict[str, Any]]) -> list[str]:
    times = wall_rows(rows)
    if not times:
        return []
    md = ["", "## Wall time per step, and the peak memory of its work (a cached step shows the run that made it)", "",
          "| step | step work s | evaluation s | total s | peak RSS of the step work |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(t) + " |" for t in times]
    if any(t[-1].endswith("*") for t in times):
        md += ["", "\\* peak resident memory since the process started (the kernel's peak could not be reset "
                   "before the step: /proc/self/clear_refs not writable here)."]
    return md


def _markdown_samples(rows: list[dict[str, Any]]) -> list[str]:
    prompts = sample_prompts(rows)
    if not prompts:
        return []
    sampled = any(s.get("greedy") is not None for r in rows for s in r.get("samples") or [])
    how = sampling_line(rows)
    md = ["", "## Sample generations (" + ("sampled" if sampled else "greedy")
          + "; the prompt, then each step's continuation)"] + (["", how] if how else [])
    for prompt in prompts:
        md += ["", f"**{prompt}** …", "", "| step | continuation |", "|---|---|"]
        md += [f"| {step} | {cell} |" for step, cell, _ in _sample_cells(rows, prompt, "text")]
    if sampled:
        md += ["", "### Greedy continuations: the parity check",
               "", "Argmax decoding; \"= input\" marks a step that continues exactly like the step before it "
               "(an export must)."]
        for prompt in prompts:
            md += ["", f"**{prompt}** …", "", "| step | greedy continuation | |", "|---|---|---|"]
            md += [f"| {step} | {cell} | {'= input' if same else ''} |"
                   for step, cell, same in _sample_cells(rows, prompt, "greedy")]
    return md


def _sample_cells(rows: list[dict[str, Any]], prompt: str, key: str) -> list[tuple[str, str, bool]]:
    """(step, table cell, same text as the row before) for each row with a continuation of `prompt`."""
    out, prev = [], None
    for r in rows:
        text = sample_text(r, prompt, key)
        if text is not None:
            out.append((r["step"], text.replace("|", "\\|") or "(empty)", text == prev))  # a pipe ends the cell
            prev = text
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write a temporary sibling, then rename it over `path`: a kill mid-write leaves the old file whole."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    flat = [_flatten({k: v for k, v in r.items() if k not in CSV_SKIP}) for r in rows]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(flat)
    write_atomic(path, buf.getvalue())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_tensorboard(log_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One scalar per metric, x = step index (0 = base); the table as text maps indices to names."""
    from torch.utils.tensorboard import SummaryWriter  # slow import; only the runner needs it

    shutil.rmtree(log_dir, ignore_errors=True)  # a rewrite must not append a second copy of each point
    with SummaryWriter(log_dir=str(log_dir)) as w:
        for i, r in enumerate(rows):
            scalars = [(tag, get(r, key)) for tag, key in SCALARS]
            scalars += [(f"projected_tokens_per_s/{t}", v)
                        for t, v in (r.get("projected_decode_tokens_per_s") or {}).items()]
            for tag, value in scalars:
                if isinstance(value, (int, float)):
                    w.add_scalar(tag, value, global_step=i)
        w.add_text("steps", "\n".join(f"{i}: {r['step']}" for i, r in enumerate(rows)), global_step=0)
