"""What the metrics of a run say: the Pareto front, the best point, the table every view shows.

Rows are metrics.json dicts (evalsuite.metrics), one per step, in step order; the first is the base.

- Pareto front: the measured steps that no other step beats on both perplexity and decode latency
  (p50 ms/token); each is the fastest way to reach its perplexity.
- Best point: the fastest step (lowest decode ms/token p50) whose perplexity is within the budget,
  ppl <= ppl_budget x base ppl (default 1.10, the plan's `eval.ppl_budget`). It is always on the
  front. When no compressed step fits the budget the base is best: nothing was worth its loss.
Steps that are "to be built on target" (TensorRT here) have no measurements and take no part; the table
shows their projections with the reason they were not measured (evalsuite.deployment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evalsuite import deployment
from evalsuite.deployment import not_measured_text
from evalsuite.hardware import HOST, TARGETS

DEFAULT_PPL_BUDGET = 1.10
BEST_MARK, FRONT_MARK = "★", "◆"


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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if spec == "bytes":
        return human_bytes(value)
    return spec.format(value)


# -- which steps are worth it ----------------------------------------------------------------------

def decode_ms(row: dict[str, Any]) -> float | None:
    return get(row, "decode_ms_per_token.p50")


def unreliable(row: dict[str, Any]) -> str | None:
    """Why the row's timing is not to be trusted (a busy machine, runs that disagree), or None."""
    return get(row, "latency.unreliable")


def speedup(row: dict[str, Any], base: dict[str, Any], spec: str = "{:.2f}x") -> str:
    """How much faster row decodes than base, marked when either timing is not to be trusted."""
    value = ratio(decode_ms(base), decode_ms(row))
    if value is None:
        return "–"
    noisy = unreliable(row) or unreliable(base)
    return spec.format(value) + (" (noisy timing)" if noisy else "")


def is_measured(row: dict[str, Any]) -> bool:
    """Has both coordinates of the perplexity/latency plane."""
    return row.get("ppl") is not None and decode_ms(row) is not None


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the measured rows no other row dominates (lower-or-equal ppl and ms, one strictly),
    ordered by decode latency."""
    pts = {i: (decode_ms(r), r["ppl"]) for i, r in enumerate(rows) if is_measured(r)}

    def dominated(i: int) -> bool:
        x, y = pts[i]
        return any(xj <= x and yj <= y and (xj, yj) != (x, y) for j, (xj, yj) in pts.items() if j != i)

    return sorted((i for i in pts if not dominated(i)), key=lambda i: pts[i])


def best_index(rows: list[dict[str, Any]], ppl_budget: float = DEFAULT_PPL_BUDGET) -> int | None:
    """The fastest measured row with ppl <= ppl_budget x base ppl (ties: lower ppl); None if unmeasured."""
    base_ppl = rows[0].get("ppl") if rows else None
    ok = [i for i, r in enumerate(rows)
          if is_measured(r) and (base_ppl is None or r["ppl"] <= ppl_budget * base_ppl)]
    return min(ok, key=lambda i: (decode_ms(rows[i]), rows[i]["ppl"])) if ok else None


def verdict(rows: list[dict[str, Any]], ppl_budget: float = DEFAULT_PPL_BUDGET) -> str:
    """One sentence: which step is best and what it buys over the base."""
    best = best_index(rows, ppl_budget)
    rule = f"the fastest step with perplexity within {ppl_budget:.2f}x the base's"
    if best is None:
        return f"No step has both perplexity and latency measured, so no best point ({rule})."
    b, base = rows[best], rows[0]
    if best == 0:
        return f"Best point ({rule}): the base model itself; no compressed step is faster within that budget."
    parts = [f"decode {decode_ms(b):.2f} ms/token"]
    if decode_ms(base):
        parts[-1] += f" ({speedup(b, base)} faster than the base)"
    if b.get("bytes_on_disk") and base.get("bytes_on_disk"):
        parts.append(f"{human_bytes(b['bytes_on_disk'])} on disk "
                     f"({base['bytes_on_disk'] / b['bytes_on_disk']:.2f}x smaller)")
    parts.append(f"perplexity {b['ppl']:.2f}"
                 + (f" ({b['ppl'] / base['ppl']:.3f}x the base)" if base.get("ppl") else ""))
    return f"Best point ({rule}): {b['step']}: " + ", ".join(parts) + "."


# -- the table -------------------------------------------------------------------------------------

def _p50_p90(row: dict[str, Any], key: str, spec: str) -> str:
    d = row.get(key) or {}
    if d.get("p50") is None:
        return "–"
    return f"{spec.format(d['p50'])} / {spec.format(d['p90'])}" + (" ?" if unreliable(row) else "")


def _host_fraction(row: dict[str, Any]) -> str:
    h = row.get("host_roofline") or {}
    if h.get("measured_over_projected") is None:
        return "–"
    share = h["measured_over_projected"]
    percent = f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"
    if share > 1:  # the roofline is an upper bound: above it, the measurement (or the bandwidth) is noise
        return f"{percent} of {h['projected_tokens_per_s']:,.0f}: above the bound, noise"
    return f"{percent} of {h['projected_tokens_per_s']:,.0f}"


def _ppl(row: dict[str, Any]) -> str:
    if row.get("status") not in (None, "measured"):
        return not_measured_text(row)
    return fmt(row.get("ppl"), "{:.2f}")


def _device(row: dict[str, Any]) -> str:
    return "target" if row.get("status") not in (None, "measured") else row.get("device", "?")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


# (title, cell(row, base_row) -> str); speed-up and size ratios are against the base (the first row).
COLUMNS: list[tuple[str, Any]] = [
    ("step", lambda r, b: r.get("step", "?")),
    ("backend · device", lambda r, b: f"{r.get('backend', '?')} · {_device(r)}"),
    ("params", lambda r, b: fmt(r.get("params"), "{:,}")),
    ("size on disk", lambda r, b: fmt(r.get("bytes_on_disk"), "bytes")),
    ("smaller than base", lambda r, b: fmt(ratio(b.get("bytes_on_disk"), r.get("bytes_on_disk")), "{:.2f}x")),
    ("ppl", lambda r, b: _ppl(r)),
    ("ppl / base", lambda r, b: fmt(r.get("ppl_ratio_to_base"), "{:.3f}")),
    ("prefill ms p50 / p90", lambda r, b: _p50_p90(r, "prefill_ms", "{:.1f}")),
    ("decode ms/token p50 / p90", lambda r, b: _p50_p90(r, "decode_ms_per_token", "{:.2f}")),
    ("faster than base", lambda r, b: speedup(r, b)),
    ("tokens/s", lambda r, b: fmt(r.get("tokens_per_s"), "{:,.1f}")),
    ("peak mem", lambda r, b: fmt(r.get("peak_mem_bytes"), "bytes")),
    ("tok/s vs host roofline", lambda r, b: _host_fraction(r)),
]


def projection_targets(rows: list[dict[str, Any]]) -> list[str]:
    """Targets with a projection in any row, in catalog order (host last)."""
    have = {t for r in rows for t in (r.get("projected_decode_tokens_per_s") or {})}
    return [t for t in (*TARGETS, HOST) if t in have] + sorted(have - {*TARGETS, HOST})


@dataclass(frozen=True)
class Table:
    head: list[str]
    cells: list[list[str]]  # one list per row, same order as the rows
    marks: list[str]  # BEST_MARK, FRONT_MARK or "" per row


def table(rows: list[dict[str, Any]], ppl_budget: float = DEFAULT_PPL_BUDGET, relative: bool = True) -> Table:
    """The report's table; relative=False (a lone model) leaves out the marks and the ratios to a base."""
    targets = projection_targets(rows)
    head = [""] + [c[0] for c in COLUMNS] + [f"projected tok/s {t}" for t in targets]
    front, best = set(pareto_front(rows)), best_index(rows, ppl_budget)
    marks = [BEST_MARK if i == best else FRONT_MARK if i in front else "" for i in range(len(rows))]
    marks = marks if relative else [""] * len(rows)
    base = rows[0] if relative else {}
    cells = []
    for mark, r in zip(marks, rows):
        proj = r.get("projected_decode_tokens_per_s") or {}
        cells.append([mark] + [cell(r, base) for _, cell in COLUMNS]
                     + [fmt(proj.get(t), "{:,.0f}") for t in targets])
    return Table(head, cells, marks)


def markdown_table(rows: list[dict[str, Any]], ppl_budget: float = DEFAULT_PPL_BUDGET, relative: bool = True) -> str:
    t = table(rows, ppl_budget, relative)
    lines = ["| " + " | ".join(t.head) + " |", "|" + "---|" * len(t.head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in t.cells]
    return "\n".join(lines)


# -- what to ship, per target device (evalsuite.deployment picks) ---------------------------------------

SHIP_HEAD = ["device", "ship", "runtime", "file", "size", "decode tok/s", "ppl / base", "why"]


def ship_table(rows: list[dict[str, Any]], ppl_budget: float) -> list[tuple[list[str], bool]]:
    """The report's "what to ship" rows, (cells in SHIP_HEAD's columns, unmeasured): the pick of each
    device, then the artifacts that run there unmeasured, with their projection and the reason. Empty for
    rows that declare no runtime (runs measured before rows did; a model measured outside a plan)."""
    if not any(deployment.Runtime.of(r) for r in rows):
        return []
    out = []
    for pick in deployment.picks(rows, ppl_budget):
        device = f"{pick.device} ({', '.join(pick.processors)})"
        s = pick.ship
        if s is None:
            out.append(([device, "–", "–", "–", "–", "–", "–", pick.why], False))
        else:
            out.append(([device, s.row["step"], s.runtime.name, s.file, fmt(s.row.get("bytes_on_disk"), "bytes"),
                         s.speed(), fmt(s.row.get("ppl_ratio_to_base"), "{:.3f}"), pick.why], False))
        out += [([device, f"{o.row['step']} (not measured)", o.runtime.name, o.file,
                  fmt(o.row.get("bytes_on_disk"), "bytes"), o.speed(), "–", deployment.unmeasured_note(o, s)], True)
                for o in pick.unmeasured]
    return out


def legend(ppl_budget: float = DEFAULT_PPL_BUDGET) -> str:
    return (f"{BEST_MARK} best point: the fastest decode with perplexity <= {ppl_budget:.2f} x the base's. "
            f"{FRONT_MARK} Pareto front: no other step has both lower perplexity and lower decode latency.")


def protocol_lines(rows: list[dict[str, Any]]) -> list[str]:
    """How perplexity, latency and projections were measured (from the first row that says)."""
    out = []
    ev = next((r["eval"] for r in rows if r.get("eval")), None)
    if ev:
        out.append(f"Perplexity on {ev.get('data') or 'the eval text'}: {ev['tokens_scored']:,} tokens scored, "
                   f"windows of {ev['seq_len']} tokens moved by {ev['stride']}.")
    lat = next((r["latency"] for r in rows if r.get("latency")), None)
    if lat:
        out.append(f"Latency: batch {lat['batch']}, prompt {lat['prompt']} tokens, then {lat['new_tokens']} "
                   f"greedy decode steps with KV cache; p50 / p90 over {lat['repeats']} runs after warm-up, "
                   f"{lat['threads']} threads" + (f", on {lat['cpu']}" if lat.get("cpu") else "")
                   + ". Tokens/s = batch x 1000 / decode ms p50.")
        noisy = [f"{r.get('step', '?')} ({unreliable(r)})" for r in rows if unreliable(r)]
        if noisy:
            out.append("Timings marked ? are not to be trusted: " + "; ".join(noisy)
                       + ". Rerun on a quiet machine before reading their ratios.")
    out.append("Projected tok/s: memory-bandwidth roofline, bandwidth / (weight bytes + KV-cache bytes read "
               "per token), an upper bound for each target device, not a measurement.")
    host = next((r["host_roofline"] for r in rows if r.get("host_roofline")), None)
    if host:
        out.append(f"Tok/s vs host roofline: measured tokens/s as a share of this machine's own bound "
                   f"(copy bandwidth measured at {host['bandwidth_gb_s']:.1f} GB/s): how far the runtime "
                   f"sits from the limit; the same gap is to be expected on a target.")
    return out


def target_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """[name, device, bandwidth GB/s, INT8 TOPS, FP16 TFLOPS, source] for each projected target."""
    out = []
    host = next((r["host_roofline"] for r in rows if r.get("host_roofline")), None)
    for name in projection_targets(rows):
        t = TARGETS.get(name)
        if t is not None:
            out.append([name, t.description, fmt(t.memory_bandwidth_gb_s, "{:,.1f}"), fmt(t.int8_tops, "{:,.0f}"),
                        fmt(t.fp16_tflops, "{:,.1f}"), t.source])
        elif name == HOST:
            bw = fmt(host["bandwidth_gb_s"], "{:,.1f}") if host else "measured at run time"
            out.append([name, "this machine", bw, "–", "–", "measured: numpy copy bandwidth (read + write)"])
    return out


def sample_prompts(rows: list[dict[str, Any]]) -> list[str]:
    """Prompts of the sample generations, in the order they first appear."""
    seen: list[str] = []
    for r in rows:
        seen += [s["prompt"] for s in r.get("samples") or [] if s["prompt"] not in seen]
    return seen


def sample_text(row: dict[str, Any], prompt: str, key: str = "text") -> str | None:
    """The row's continuation of `prompt` on one line (newlines shown as ↵), None if it has none.
    key "text": the sampled continuation (greedy in runs made before samples were sampled); "greedy"."""
    text = next((s.get(key) for s in row.get("samples") or [] if s["prompt"] == prompt), None)
    return None if text is None else text.replace("\r", "").replace("\n", "↵")


def sampling_line(rows: list[dict[str, Any]]) -> str | None:
    """How the sampled continuations were drawn, with the command that redraws one (None: no samples)."""
    s = next((r["sampling"] for r in rows if r.get("sampling")), None)
    if s is None:
        return None
    return (f"Samples: drawn with temperature {s['temperature']:g}, top-p {s['top_p']:g}, repetition penalty "
            f"{s['repetition_penalty']:g}, seed {s['seed']} (the same text on every run of the same model); "
            f"`python -m export.generate RUN/STEP PROMPT --max-new-tokens {s['new_tokens']} --sample "
            f"--temperature {s['temperature']:g} "
            f"--top-p {s['top_p']:g} --repetition-penalty {s['repetition_penalty']:g} --seed {s['seed']}` "
            f"draws the same way. Greedy: argmax, no penalty; an export must continue exactly like its input.")


def wall_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """[step, step s, eval s, total s, step peak RSS] per row that recorded its times (runs before: none).
    The peak RSS is the step's own work's (its measurement aside); "*" marks a peak counted from the
    process's start (the kernel's peak could not be reset before the step)."""
    out = []
    for r in rows:
        work, ev = r.get("step_wall_s"), r.get("eval_wall_s")
        if work is None and ev is None:
            continue
        total = (work or 0.0) + (ev or 0.0)
        rss = fmt(r.get("step_peak_rss_bytes"), "bytes")
        if r.get("step_peak_rss_bytes") and r.get("step_peak_rss_since") == "process start":
            rss += "*"
        out.append([r.get("step", "?"), fmt(work, "{:.1f}"), fmt(ev, "{:.1f}"), f"{total:.1f}", rss])
    return out
