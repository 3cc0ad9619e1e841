"""pareto.png and its inline-SVG twin: perplexity against decode latency, one point per step.

Lower-left is better. Marker area grows with bytes on disk, colour says the backend, a whisker runs
from the p50 to the p90 decode latency, the dashed staircase joins the Pareto front, a gold ring
marks the best point and a dotted line the perplexity budget (when it falls on the chart). Step
names are placed on the side of their marker where they overlap least.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from evalsuite.deployment import not_measured_text
from evalsuite.summary import DEFAULT_PPL_BUDGET, best_index, decode_ms, get, human_bytes, is_measured, pareto_front

BACKEND_COLORS = {"torch": "#1f77b4", "onnxruntime": "#ff7f0e", "tensorrt": "#2ca02c"}
OTHER_COLOR = "#7f7f7f"
MIN_AREA, MAX_AREA = 50.0, 650.0  # marker area in pt^2 for the smallest and largest artifact
# Sides of a marker tried for its label, in order: (dx, dy, horizontal and vertical alignment).
DIRECTIONS = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
              (-1, -1, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
              (1, 0, "left", "center"), (-1, 0, "right", "center")]


def pareto_figure(rows: list[dict[str, Any]], title: str, ppl_budget: float = DEFAULT_PPL_BUDGET) -> Figure:
    """The figure, or one that says there is nothing to plot."""
    # The bottom 5% is left free for the footnote, which the layout engine does not see.
    fig = Figure(figsize=(8.5, 5.6), dpi=120, layout=ConstrainedLayoutEngine(rect=(0, 0.05, 1, 0.95)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    pts = [i for i, r in enumerate(rows) if is_measured(r)]
    if not pts:
        ax.text(0.5, 0.5, "no step has both perplexity and decode latency measured", ha="center", va="center")
        ax.set_axis_off()
        return fig
    xs, ys = [decode_ms(rows[i]) for i in pts], [rows[i]["ppl"] for i in pts]
    p90s = [get(rows[i], "decode_ms_per_token.p90") or x for i, x in zip(pts, xs)]
    sizes = _areas([rows[i].get("bytes_on_disk") or 0 for i in pts])
    colors = [BACKEND_COLORS.get(rows[i].get("backend", ""), OTHER_COLOR) for i in pts]

    for x, p90, y, c in zip(xs, p90s, ys, colors):  # whiskers first, so the markers sit on top
        ax.plot([x, p90], [y, y], color=c, lw=1.2, alpha=0.6, zorder=2)
    ax.scatter(xs, ys, s=sizes, c=colors, alpha=0.75, edgecolors="black", linewidths=0.6, zorder=3)
    front = pareto_front(rows)
    if len(front) > 1:
        ax.step([decode_ms(rows[i]) for i in front], [rows[i]["ppl"] for i in front], where="post",
                color="black", lw=1.0, ls="--", alpha=0.7, zorder=1)
    best = best_index(rows, ppl_budget)
    ring = [s * 2.2 if i == best else s for i, s in zip(pts, sizes)]
    if best is not None:  # a gold ring around the best marker keeps its backend colour visible
        ax.scatter([decode_ms(rows[best])], [rows[best]["ppl"]], s=ring[pts.index(best)], facecolors="none",
                   edgecolors="#e0a800", linewidths=2.5, zorder=4)
    _scale_axes(ax, xs + p90s, ys)
    # The budget line is drawn only where it falls on the chart; the axes stay fitted to the points.
    budget = rows[0]["ppl"] * ppl_budget if rows[0].get("ppl") else None
    budget_shown = budget is not None and ax.get_ylim()[0] <= budget <= ax.get_ylim()[1]
    if budget_shown:
        ax.axhline(budget, color="gray", ls=":", lw=1.0, zorder=0)

    ax.set_xlabel("decode latency, ms per token (p50; whisker to p90)  →  slower")
    ax.set_ylabel("perplexity  →  worse")
    ax.set_title(f"{title}\nperplexity vs decode latency: lower-left is better", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    handles = _legend_handles(rows, pts, ppl_budget, budget, budget_shown, len(front) > 1, best is not None)
    legend = ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    names = [rows[i]["step"] + (" (best)" if i == best else "") for i in pts]
    _place_labels(fig, ax, legend, xs, ys, ring, names)  # the best's label clears its ring
    fig.text(0.01, 0.005, _footnote(rows, pts), fontsize=7.5, color="#444444", ha="left", va="bottom", wrap=True)
    return fig


def write_pareto(rows: list[dict[str, Any]], path: Path, title: str,
                 ppl_budget: float = DEFAULT_PPL_BUDGET) -> str:
    """Write the PNG to `path`; return the same figure as an <svg> element for inline HTML."""
    fig = pareto_figure(rows, title, ppl_budget)
    fig.savefig(path, dpi=120)
    buf = io.StringIO()
    # Text stays text (small, selectable) and ids are stable, so the HTML is the same for the same run.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gpt2-edge"}):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _areas(n_bytes: list[int]) -> list[float]:
    top = max(n_bytes) or 1
    return [MIN_AREA + (MAX_AREA - MIN_AREA) * b / top for b in n_bytes]


def _scale_axes(ax, xs: list[float], ys: list[float]) -> None:
    """Log scale on an axis whose values span more than 4x; margins that leave room for labels."""
    for values, axis, set_scale, set_lim in ((xs, ax.xaxis, ax.set_xscale, ax.set_xlim),
                                             (ys, ax.yaxis, ax.set_yscale, ax.set_ylim)):
        lo, hi = min(values), max(values)
        if lo > 0 and hi / lo > 4:
            set_scale("log")
            # Ticks at 1, 2, 5 x 10^k written as plain numbers: "20", not "2 x 10^1".
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
            set_lim(lo / 1.35, hi * 1.35)
        else:
            pad = (hi - lo) * 0.18 or abs(hi) * 0.1 or 1.0
            set_lim(lo - pad, hi + pad)


def _legend_handles(rows, pts, ppl_budget, budget, budget_shown, has_front, has_best) -> list[Line2D]:
    handles = [Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black", label=b)
               for b, c in BACKEND_COLORS.items() if any(rows[i].get("backend") == b for i in pts)]
    if has_front:
        handles.append(Line2D([], [], color="black", ls="--", label="Pareto front"))
    if has_best:
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="#e0a800",
                              markeredgewidth=2.5, markersize=11,
                              label=f"best: fastest within {ppl_budget:.2f}x base ppl"))
    if budget is not None:
        where = "" if budget_shown else ", above the chart"
        handles.append(Line2D([], [], color="gray", ls=":" if budget_shown else "",
                              label=f"ppl budget {budget:.4g} ({ppl_budget:.2f}x base{where})"))
    return handles


def _footnote(rows: list[dict[str, Any]], pts: list[int]) -> str:
    sized = [r.get("bytes_on_disk") for r in rows if r.get("bytes_on_disk")]
    note = "Marker area grows with bytes on disk"
    if sized:
        note += f" ({human_bytes(min(sized))} to {human_bytes(max(sized))})"
    left = [f"{r['step']} ({not_measured_text(r)}{_projected(r)})" for i, r in enumerate(rows) if i not in pts]
    if left:
        note += ".  Not plotted: " + ", ".join(left)
    return note + "."


def _projected(row: dict[str, Any]) -> str:
    """"; projected 1,234 tok/s on orin-nano": the first projection of an unplotted row."""
    proj = row.get("projected_decode_tokens_per_s") or {}
    device = next(iter(proj), None)
    return f"; projected {proj[device]:,.0f} tok/s on {device}" if device else ""


def _place_labels(fig: Figure, ax, legend, xs: list[float], ys: list[float], sizes: list[float],
                  names: list[str]) -> None:
    """Put each step name on the side of its marker where it overlaps other labels, markers and the
    legend least (the first side with no overlap at all wins)."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # fix the layout so data -> pixel transforms are final
    px_per_pt = fig.dpi / 72
    radii = [s ** 0.5 / 2 for s in sizes]  # marker radius in points (a scatter size is an area in pt^2)
    centers = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    markers = [Bbox.from_extents(cx - r * px_per_pt, cy - r * px_per_pt, cx + r * px_per_pt, cy + r * px_per_pt)
               for (cx, cy), r in zip(centers, radii)]
    frame = ax.get_window_extent(renderer)
    placed = [legend.get_window_extent(renderer)]
    for k, (x, y, r, name) in enumerate(zip(xs, ys, radii, names)):
        obstacles = placed + markers[:k] + markers[k + 1:]
        options = []
        for dx, dy, ha, va in DIRECTIONS:
            gap = (0.75 * r if dx and dy else r) + 3  # just outside the marker's edge
            text = ax.annotate(name, (x, y), xytext=(dx * gap, dy * gap), textcoords="offset points",
                               ha=ha, va=va, fontsize=8.5, zorder=5)
            text.set_in_layout(False)  # labels must not move the axes after they were placed
            box = text.get_window_extent(renderer)
            options.append((sum(_overlap(box, b) for b in obstacles) + 4 * _outside(box, frame), text, box))
            if options[-1][0] == 0:
                break
        cost, chosen, box = min(options, key=lambda o: o[0])
        for _, text, _ in options:
            if text is not chosen:
                text.remove()
        placed.append(box)


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Bbox, frame: Bbox) -> float:
    """Area of `box` that falls outside `frame`."""
    return box.width * box.height - _overlap(box, frame)
