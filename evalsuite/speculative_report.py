"""The report's speculative-decoding section, from evalsuite.speculative_measure's result dict."""

from __future__ import annotations

from html import escape
from typing import Any

from evalsuite.summary import fmt

TITLE = "Speculative decoding"


def speculative_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for every row that carries a `speculative` result (its step is the target)."""
    md: list[str] = []
    for r in rows:
        s = r.get("speculative")
        if s:
            md += ["", f"## {TITLE}: {r['step']} as target, {s.get('draft_step', 'the draft')} as draft", ""]
            md += section(s)
    return md


def _k(row: dict[str, Any]) -> str:
    return f"{row['k']}{' adaptive' if row['adaptive'] else ''}"


def section(s: dict[str, Any]) -> list[str]:
    if s.get("status"):  # not measurable here (e.g. a TensorRT engine), said instead of left out
        return [f"Not measured: {s['status']}."]
    md = ["| device | speedup | at k | worth it (> 1.1x) |", "|---|---:|---:|---|"]
    md += [f"| {v['device']} | {v['speedup']:.2f}x {v['kind']} | {_k(v)} | {'yes' if v['worth_it'] else 'no'} |"
           for v in s["verdict"]]
    devices = list(s["per_k"][0]["projected_speedup"]) if s["per_k"] else []
    md += ["", "| k | acceptance | tokens / target call | ms / target call | ms / draft call | decode tok/s | "
           "measured speedup | text = target's greedy | " + " | ".join(f"projected {d}" for d in devices) + " |",
           "|---" * (8 + len(devices)) + "|"]
    alone = s["target_alone"]
    md.append(f"| target alone | – | 1.00 | {alone['decode_ms_per_token']:.2f} | – | {alone['decode_tokens_per_s']:.1f} "
              f"| 1.00x | – |" + " |" * len(devices))
    for row in s["per_k"]:
        same = "yes" if row["identical_to_target"] else f"**no** (prompts {row['prompts_differing']})"
        md.append(f"| {_k(row)} | {row['acceptance_rate']:.0%} | {row['tokens_per_target_call']:.2f} | "
                  f"{row['target_call_ms']:.2f} | {row['draft_call_ms']:.2f} | {row['decode_tokens_per_s']:.1f} | "
                  f"{row['speedup']:.2f}x | {same} | "
                  + " | ".join(f"{row['projected_speedup'][d]:.2f}x" for d in devices) + " |")
    p, t, d = s["protocol"], s["target"], s["draft"]
    md += ["", f"- Measured on {p['device']}, {p['threads']} threads: batch 1, {p['prompts']} prompts of "
               f"{p['prompt']} tokens from the eval text, {p['new_tokens']} greedy tokens each, median of "
               f"{p['repeats']} round-robin rounds after {p['warmup']} warm-up; decode tok/s excludes the prefill.",
           f"- Memory: target {t['backend']} weights {fmt(t['weight_bytes'], 'bytes')} + KV cache "
           f"{fmt(t['kv_bytes'], 'bytes')}; draft {d['backend']} weights {fmt(d['weight_bytes'], 'bytes')} + KV "
           f"{fmt(d['kv_bytes'], 'bytes')}; peak resident {fmt(s['peak_mem_bytes'], 'bytes')} with both loaded.",
           "- Projected: memory roofline, E[tokens per target call] / (1 + k x t_draft / t_target), each t = bytes "
           "read per call / bandwidth; an upper bound that leaves out the fixed cost of each call (which a draft "
           "pays k times). Greedy text must equal the target's; a **no** above is a numerical difference of the "
           "batched verification (k+1 positions in one call) from one-at-a-time decoding."]
    return md


def speculative_html(rows: list[dict[str, Any]]) -> str:
    """The same section for report.html: its markdown's headings, tables and bullets as HTML."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head = "".join(f"<th>{escape(c)}</th>" for c in table[0])
            body = "".join("<tr>" + "".join(f"<td>{escape(c.replace('**', ''))}</td>" for c in r) + "</tr>"
                           for r in table[2:])  # table[1] is the |---| line
            out.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
            table.clear()

    for line in speculative_lines(rows):
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{escape(line[3:])}</h2>")
        elif line.startswith("- "):
            out.append(f'<p class="muted">{escape(line[2:].replace("**", ""))}</p>')
        elif line:
            out.append(f"<p>{escape(line)}</p>")
    flush()
    return "\n".join(out)
