"""The report of a run dir made of hand-written metrics.json files: rows, ratios, front, files."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import pytest

from evalsuite.html_page import render_html
from evalsuite.plot import pareto_figure
from evalsuite.report import load_run_metrics, markdown_report, write_report
from evalsuite.summary import best_index, pareto_front, table, verdict

BASE_PPL = 20.0


def metrics(step, ppl, ms, n_bytes, backend="torch", status="measured", summary=""):
    """A metrics.json as the runner writes it; ms None means not measured (e.g. to be built on target)."""
    m = {"schema": 1, "step": step, "kind": "torch", "backend": backend, "device": "cpu", "status": status,
         "params": 1_000_000, "bytes_on_disk": n_bytes, "weight_bytes": n_bytes, "ppl": ppl,
         "ppl_ratio_to_base": ppl / BASE_PPL if ppl else None, "prefill_ms": None, "decode_ms_per_token": None,
         "tokens_per_s": None, "peak_mem_bytes": None, "summary": summary,
         "projected_decode_tokens_per_s": {"orin-nano": 68e9 / n_bytes, "agx-orin": 204.8e9 / n_bytes},
         "eval": {"data": "heldout.txt", "seq_len": 128, "stride": 128, "tokens_scored": 5000,
                  "tokens_total": 5001, "windows": 40},
         "latency": None, "host_roofline": None, "samples": None}
    if ms is not None:
        m.update(prefill_ms={"p50": 8 * ms, "p90": 9 * ms}, decode_ms_per_token={"p50": ms, "p90": 1.2 * ms},
                 tokens_per_s=1000 / ms, peak_mem_bytes=300 * 2**20,
                 latency={"batch": 1, "prompt": 64, "new_tokens": 32, "repeats": 5, "threads": 2},
                 host_roofline={"bandwidth_gb_s": 20.0, "projected_tokens_per_s": 20e9 / n_bytes,
                                "measured_over_projected": (1000 / ms) / (20e9 / n_bytes)},
                 samples=[{"prompt": "The function returns", "text": f" the {step} | line\nnext"}])
    return m


def test_report_shows_sampled_text_greedy_parity_and_wall_times():
    rows = [metrics("00-base", 20.0, 10.0, 4000), metrics("01-quantize", 21.0, 8.0, 1000),
            metrics("02-export-onnx", 21.0, 4.0, 1000, backend="onnxruntime")]
    for r, sampled, greedy, wall in zip(rows, ["a cat", "a dog", "a dig"], ["the the", "the a", "the a"],
                                        [120.5, 3.0, 9.25]):
        r.update(samples=[{"prompt": "P", "text": sampled, "greedy": greedy}], step_wall_s=wall, eval_wall_s=2.0,
                 sampling={"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 0, "top_k": 0,
                           "new_tokens": 24})
    md = markdown_report(rows, "t")
    sampled, greedy = md.split("### Greedy continuations")
    assert "## Sample generations (sampled;" in sampled and "| 01-quantize | a dog |" in sampled
    assert "--sample --temperature 0.8 --top-p 0.9 --repetition-penalty 1.3 --seed 0" in sampled
    assert "| 00-base | the the |  |" in greedy and "| 01-quantize | the a |  |" in greedy
    assert "| 02-export-onnx | the a | = input |" in greedy  # the export continues like its input
    assert "| 00-base | 120.5 | 2.0 | 122.5 | – |" in md and "| 02-export-onnx | 9.2 | 2.0 | 11.2 | – |" in md
    rows[0].update(step_peak_rss_bytes=300 * 2**20, step_peak_rss_since="step start")
    rows[1].update(step_peak_rss_bytes=2**30, step_peak_rss_since="process start")  # could not be reset
    md = markdown_report(rows, "t")
    assert "| 00-base | 120.5 | 2.0 | 122.5 | 300.0 MB |" in md and "| 01-quantize | 3.0 | 2.0 | 5.0 | 1.0 GB* |" in md
    assert "\\* peak resident memory since the process started" in md
    page = render_html(rows, "t", "<svg></svg>")
    assert "Wall time per step" in page and "<td>122.5</td>" in page and "Greedy continuations" in page
    legacy = markdown_report([metrics("00-base", 20.0, 10.0, 4000)], "old run")  # greedy text only, no times
    assert "## Sample generations (greedy;" in legacy and "Greedy continuations" not in legacy
    assert "Wall time per step" not in legacy


# The planted set: the front is base, 02-distill, 04-export-onnx; 01-prune and 03-quantize are dominated
# (03-quantize by 02-distill, which is both faster and lower-perplexity); 05 is not measured.
ROWS = [
    metrics("00-base", 20.0, 10.0, 40_000_000, summary="pretrained 4x256"),
    metrics("01-prune", 23.0, 6.0, 25_000_000, summary="pruned MLP 50%"),
    metrics("02-distill", 21.0, 6.0, 25_000_000, summary="distilled from the base"),
    metrics("03-quantize", 21.5, 7.5, 8_000_000, summary="int8 weights"),
    metrics("04-export-onnx", 21.6, 3.1, 9_000_000, backend="onnxruntime", summary="exported to ONNX"),
    metrics("05-export-tensorrt", None, None, 9_500_000, backend="tensorrt", status="to be built on target",
            summary="engine to be built on the Jetson"),
]


@pytest.fixture
def run_dir(tmp_path):
    for m in ROWS:
        d = tmp_path / m["step"]
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m))
        (d / "DONE").write_text("")
    (tmp_path / ".06-unfinished.tmp").mkdir()  # a half-written step is never reported
    return tmp_path


def test_pareto_front_and_best_on_planted_set():
    assert pareto_front(ROWS) == [4, 2, 0]  # ordered by decode latency
    assert best_index(ROWS, 1.10) == 4  # fastest with ppl <= 22.0
    assert best_index(ROWS, 1.06) == 2  # 21.6 is over 21.2; 02-distill is the fastest left
    assert best_index(ROWS, 1.0) == 0  # nothing but the base fits
    assert best_index([ROWS[5]]) is None


def test_pareto_front_keeps_ties_and_drops_weakly_dominated():
    rows = [metrics("a", 10.0, 5.0, 1000), metrics("b", 10.0, 5.0, 2000),  # identical points: both kept
            metrics("c", 10.0, 6.0, 1000),  # same ppl, slower: dominated
            metrics("d", 9.0, 8.0, 1000)]
    assert pareto_front(rows) == [0, 1, 3]


def test_table_rows_marks_and_ratios():
    t = table(ROWS, 1.10)
    assert [c[1] for c in t.cells] == [m["step"] for m in ROWS]
    assert t.marks == ["◆", "", "◆", "", "★", ""]
    col = {h: i for i, h in enumerate(t.head)}
    onnx = t.cells[4]
    assert onnx[col["ppl / base"]] == "1.080"
    assert onnx[col["faster than base"]] == "3.23x"  # 10 / 3.1
    assert onnx[col["smaller than base"]] == "4.44x"  # 40 MB / 9 MB
    assert onnx[col["decode ms/token p50 / p90"]] == "3.10 / 3.72"
    assert onnx[col["tok/s vs host roofline"]] == "15% of 2,222"  # (1000 / 3.1) / (20e9 / 9e6) = 0.145
    assert t.cells[3][col["tok/s vs host roofline"]] == "5.3% of 2,500"  # under 10%: one decimal
    assert onnx[col["projected tok/s orin-nano"]] == "7,556"  # 68e9 / 9e6
    trt = t.cells[5]
    assert trt[col["ppl"]] == "not measured here (to be built on target)"  # a row without a declared runtime
    assert trt[col["backend · device"]] == "tensorrt · target"
    assert trt[col["decode ms/token p50 / p90"]] == "–"
    assert trt[col["projected tok/s agx-orin"]] == "21,558"  # sizes and projections still shown


def test_verdict_names_best_and_its_gains():
    v = verdict(ROWS, 1.10)
    assert "04-export-onnx" in v and "3.23x faster" in v and "4.44x smaller" in v and "1.080x the base" in v
    assert "the base model itself" in verdict(ROWS, 1.0)


def test_write_report_files(run_dir):
    rows = load_run_metrics(run_dir)
    assert [r["step"] for r in rows] == [m["step"] for m in ROWS]
    md_path = write_report(run_dir, rows, "demo report", notes=["wall time 1 s"], ppl_budget=1.10)
    md = md_path.read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| ") and "00-base" not in line[:4]]
    for m in ROWS:  # every step has its row, its summary line
        assert any(f"| {m['step']} |" in line for line in table_lines)
        assert f"**{m['step']}**: {m['summary']}" in md
    assert "| ★ | 04-export-onnx |" in md
    assert "| 04-export-onnx |  the 04-export-onnx \\| line↵next |" in md  # one line, pipe escaped
    assert "wall time 1 s" in md

    png = (run_dir / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    with open(run_dir / "metrics.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["step"] for r in csv_rows] == [m["step"] for m in ROWS]
    assert csv_rows[4]["decode_ms_per_token.p50"] == "3.1" and "samples" not in csv_rows[0]


def test_tensorboard_has_one_scalar_per_metric_per_step(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_report(run_dir, load_run_metrics(run_dir), "demo")
    write_report(run_dir, load_run_metrics(run_dir), "demo")  # a rewrite replaces, never appends
    events = EventAccumulator(str(run_dir / "tensorboard" / "metrics"))
    events.Reload()
    ppl = events.Scalars("ppl")
    assert [e.step for e in ppl] == [0, 1, 2, 3, 4]  # 05 (to be built on target) has no perplexity
    assert [round(e.value, 3) for e in ppl] == [20.0, 23.0, 21.0, 21.5, 21.6]
    assert len(events.Scalars("projected_tokens_per_s/orin-nano")) == len(ROWS)
    assert "decode_ms_per_token/p50" in events.Tags()["scalars"]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.external += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_one_self_contained_file(run_dir):
    write_report(run_dir, load_run_metrics(run_dir), "demo <report>", ppl_budget=1.10)
    page = (run_dir / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("svg") == 1  # the plot, inline
    assert not {"script", "link", "img", "iframe"} & set(parser.tags)
    assert parser.external == []  # nothing fetched from elsewhere
    assert "demo &lt;report&gt;" in page  # titles are escaped
    assert 'class="best"' in page and page.count("<tr") >= len(ROWS) + 1
    for m in ROWS:
        assert m["step"] in parser.text


def test_report_without_measurements(tmp_path):
    rows = [metrics("00-base", None, None, 1000, status="to be built on target")]
    write_report(tmp_path, rows, "nothing measured", tensorboard=False)
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert "no best point" in markdown_report(rows, "t")


def test_plot_labels_do_not_overlap_in_a_crowd():
    # Nine steps within 2x latency and 10% perplexity of each other, as a sweep of exports produces.
    rows = [metrics("00-base", 20.0, 40.0, 120_000_000)]
    rows += [metrics(f"{i:02d}-export-onnx", 20.5 + 0.17 * (i % 4), 8 + 0.5 * i, (10 + 6 * i) * 10**6,
                     backend="onnxruntime") for i in range(1, 9)]
    fig = pareto_figure(rows, "crowded")
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("0")]
    assert sorted(t.get_text().removesuffix(" (best)") for t in labels) == sorted(r["step"] for r in rows)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_kill_mid_write_leaves_the_previous_report_whole(run_dir, monkeypatch):
    rows = load_run_metrics(run_dir)
    write_report(run_dir, rows, "first", tensorboard=False)
    before = {f: (run_dir / f).read_bytes() for f in ("report.md", "report.html", "metrics.csv")}

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies after writing the temporary file, before the rename

    monkeypatch.setattr("evalsuite.report.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report(run_dir, rows[:2], "second", tensorboard=False)
    assert (run_dir / "report.md").read_bytes() == before["report.md"]  # the old report, whole
    assert (run_dir / "report.md.tmp").read_text().startswith("# second")
    monkeypatch.undo()
    write_report(run_dir, rows[:2], "third", tensorboard=False)
    assert (run_dir / "report.md").read_text().startswith("# third") and not (run_dir / "report.md.tmp").exists()
    with open(run_dir / "metrics.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["00-base", "01-prune"]
