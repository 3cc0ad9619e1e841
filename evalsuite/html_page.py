"""report.html: one self-contained file (inline CSS, the plot as inline SVG, no scripts, no links out).

Named html_page, not html, so that it never shadows the standard library's `html` module.
"""

from __future__ import annotations

from html import escape
from typing import Any

from evalsuite.speculative_report import speculative_html
from evalsuite.summary import (BEST_MARK, DEFAULT_PPL_BUDGET, FRONT_MARK, SHIP_HEAD, legend, protocol_lines,
                               sample_prompts, sample_text, sampling_line, ship_table, table, target_rows, verdict,
                               wall_rows)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2em; }
.verdict { background: #fff8dc; border-left: 4px solid #e0b000; padding: .6em 1em; margin: 1em 0; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .3em .55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; font-weight: 600; }
td.text, th.text { text-align: left; white-space: normal; }
td.sample { text-align: left; white-space: pre-wrap; max-width: 70em; }
tr.best td { background: #fff3b0; font-weight: 600; }
tr.unmeasured td { color: #777; font-style: italic; }
.scroll { overflow-x: auto; }
.prompt { color: #888; } .muted { color: #666; font-size: .92em; }
"""


def render_html(rows: list[dict[str, Any]], title: str, svg: str, notes: list[str] = (),
                ppl_budget: float = DEFAULT_PPL_BUDGET) -> str:
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="verdict">{escape(verdict(rows, ppl_budget))}</p>',
             f"<figure>{svg}</figure>",
             _main_table(rows, ppl_budget),
             f'<p class="muted">{escape(legend(ppl_budget))}</p>',
             _ship(rows, ppl_budget),
             "<h2>What each step did</h2>",
             "<ul>" + "".join(f"<li><b>{escape(r['step'])}</b>: {escape(r.get('summary') or '(no summary)')}</li>"
                              for r in rows) + "</ul>",
             _wall(rows), "<h2>How it was measured</h2>",
             "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in protocol_lines(rows)) + "</ul>",
             _samples(rows), speculative_html(rows), _targets(rows)]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _main_table(rows: list[dict[str, Any]], ppl_budget: float) -> str:
    t = table(rows, ppl_budget)
    head = "".join(f"<th>{escape(h)}</th>" for h in t.head)
    body = []
    for r, mark, cells in zip(rows, t.marks, t.cells):
        cls = "best" if mark == BEST_MARK else "unmeasured" if r.get("status") not in (None, "measured") else ""
        title = {BEST_MARK: "best point", FRONT_MARK: "on the Pareto front"}.get(mark, "")
        tds = "".join(f'<td title="{title}">{escape(c)}</td>' if j == 0 else f"<td>{escape(c)}</td>"
                      for j, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<div class="scroll"><table><tr>{head}</tr>\n' + "\n".join(body) + "</table></div>"


def _ship(rows: list[dict[str, Any]], ppl_budget: float) -> str:
    cells = ship_table(rows, ppl_budget)
    if not cells:
        return ""
    head = "".join(f'<th class="text">{escape(h)}</th>' for h in SHIP_HEAD)
    trs = "".join(f'<tr class="{"unmeasured" if unmeasured else ""}">'
                  + "".join(f'<td class="text">{escape(v)}</td>' for v in c) + "</tr>" for c, unmeasured in cells)
    return ("<h2>What to ship, per target device</h2>"
            f'<p class="muted">The artifact whose runtime runs on the device with the highest decode tokens/s '
            f"(measured on the host, projected elsewhere) and perplexity within {ppl_budget:.2f}x the base's; "
            "artifacts that run there but could not be measured here follow it with their projection.</p>"
            f'<div class="scroll"><table><tr>{head}</tr>{trs}</table></div>')


def _samples(rows: list[dict[str, Any]]) -> str:
    prompts = sample_prompts(rows)
    if not prompts:
        return ""
    how = sampling_line(rows)
    out = ["<h2>Sample generations</h2>",
           f'<p class="muted">{"Sampled" if how else "Greedy"} continuations of the same prompts by every step: grey '
           "is the prompt, black the model's continuation." + (f" {escape(how)}" if how else "") + "</p>"]
    keys = ["text", "greedy"] if how else ["text"]
    for key in keys:
        if key == "greedy":
            out.append("<h3>Greedy continuations: the parity check</h3>"
                       '<p class="muted">Argmax decoding; an export must continue exactly like the step it exports.</p>')
        for prompt in prompts:
            trs = "".join(f'<tr><td class="text">{escape(r["step"])}</td><td class="sample">'
                          f'<span class="prompt">{escape(prompt)}</span>{escape(text)}</td></tr>'
                          for r in rows if (text := sample_text(r, prompt, key)) is not None)
            out.append(f'<table><tr><th class="text">step</th><th class="text">{escape(prompt)} …</th></tr>'
                       f"{trs}</table>")
    return "\n".join(out)


def _wall(rows: list[dict[str, Any]]) -> str:
    times = wall_rows(rows)
    if not times:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("step", "step work s", "evaluation s", "total s",
                                            "peak RSS of the step work"))
    trs = "".join("<tr>" + "".join(f'<td class="text">{escape(c)}</td>' if j == 0 else f"<td>{escape(c)}</td>"
                                   for j, c in enumerate(t)) + "</tr>" for t in times)
    return ('<h2>Wall time per step</h2><p class="muted">Seconds; a cached step shows the run that made it. '
            'Peak RSS: the step\'s own work, measurement aside (* counted from the process start).</p>'
            f"<table><tr>{head}</tr>{trs}</table>")


def _targets(rows: list[dict[str, Any]]) -> str:
    targets = target_rows(rows)
    if not targets:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("target", "device", "GB/s", "INT8 TOPS", "FP16 TFLOPS"))
    trs = "".join("<tr>" + "".join(f'<td class="text">{escape(c)}</td>' if j < 2 else f"<td>{escape(c)}</td>"
                                   for j, c in enumerate(t[:5])) + "</tr>" for t in targets)
    sources = "".join(f"<li><b>{escape(t[0])}</b>: {escape(t[5])}</li>" for t in targets)
    return ("<h2>Target devices</h2><p>Projected tokens/s use each device's published memory bandwidth "
            "(decode is memory-bound at batch 1); they are upper bounds, not measurements.</p>"
            f"<table><tr>{head}</tr>{trs}</table><ul class=\"muted\">{sources}</ul>")
