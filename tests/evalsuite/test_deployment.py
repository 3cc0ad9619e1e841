"""What to ship per target device: picked from the runtimes the rows declare, unmeasured rows shown."""

from __future__ import annotations

import pytest

from evalsuite.deployment import TORCH, Runtime, picks
from evalsuite.summary import ship_table
from evalsuite.hardware import CPU, NVIDIA_GPU
from evalsuite.html_page import render_html
from evalsuite.report import markdown_report

ORT = Runtime("ONNX Runtime", (CPU, NVIDIA_GPU))
TRT = Runtime("TensorRT", (NVIDIA_GPU,), unmeasured_reason="engine is built on the device")
GGUF = Runtime("llama.cpp", (CPU, NVIDIA_GPU))
DEVICES = {"orin-nano": 68e9, "h100": 3350e9, "host": 20e9}  # bytes/s of each device's projection


def row(step, ppl, n_bytes, runtime=TORCH, tokens_per_s=None, artifact="model", measured=True):
    """A metrics.json row: projections from n_bytes; tokens_per_s measured on the host's CPU."""
    r = {"step": step, "status": "measured" if measured else "to be built on target", "backend": "x",
         "device": "cpu", "ppl": ppl if measured else None, "ppl_ratio_to_base": ppl / 20.0 if measured else None,
         "bytes_on_disk": n_bytes, "artifact": artifact, "runtime": runtime.as_dict(),
         "projected_decode_tokens_per_s": {d: bw / n_bytes for d, bw in DEVICES.items()},
         "tokens_per_s": tokens_per_s, "host_roofline": {"bandwidth_gb_s": 20.0} if tokens_per_s else None,
         "decode_ms_per_token": {"p50": 1000 / tokens_per_s, "p90": 1000 / tokens_per_s} if tokens_per_s else None}
    return r


ROWS = [
    row("00-base", 20.0, 40_000_000, tokens_per_s=100.0),
    row("01-prune", 26.0, 20_000_000, tokens_per_s=180.0),  # outside a 1.20 budget
    row("02-quantize", 21.0, 6_000_000, tokens_per_s=90.0),  # torch: deploys=False
    row("03-export-onnx", 21.0, 6_100_000, ORT, tokens_per_s=300.0, artifact="model.onnx"),
    row("04-export-gguf", 21.2, 5_000_000, GGUF, tokens_per_s=250.0, artifact="model.gguf"),
    row("05-export-tensorrt", None, 5_500_000, TRT, artifact="model.onnx", measured=False),
]


def test_each_device_gets_the_fastest_artifact_that_runs_there_within_the_budget():
    by_device = {p.device: p for p in picks(ROWS, 1.20)}
    assert list(by_device) == list(DEVICES)
    # host: measured tokens/s decide (ONNX 300 > llama.cpp 250), although the GGUF projects faster
    host = by_device["host"]
    assert host.ship.row["step"] == "03-export-onnx" and host.ship.measured and host.ship.tokens_per_s == 300.0
    assert host.unmeasured == []  # TensorRT does not run on the host's CPU
    # orin-nano: projections decide (the smallest file reads the fewest bytes); prune is over budget
    orin = by_device["orin-nano"]
    assert orin.ship.row["step"] == "04-export-gguf" and not orin.ship.measured
    assert [o.row["step"] for o in orin.unmeasured] == ["05-export-tensorrt"]
    assert "llama.cpp runs it on the cpu / nvidia-gpu" in orin.why and "8.00x smaller" in orin.why
    # h100: GPU only; the TensorRT row is listed under the pick, not left out
    assert by_device["h100"].processors == (NVIDIA_GPU,)
    assert [o.row["step"] for o in by_device["h100"].unmeasured] == ["05-export-tensorrt"]


def test_an_export_is_shipped_before_a_pytorch_model_dir_and_pytorch_only_as_a_fallback():
    rows = [row("00-base", 20.0, 40_000_000, tokens_per_s=100.0),
            row("01-quantize", 21.0, 5_000_000, tokens_per_s=90.0),
            row("02-export-onnx", 21.0, 6_000_000, ORT, tokens_per_s=80.0, artifact="model.onnx")]
    (orin, *_) = picks(rows, 1.20)
    assert orin.ship.row["step"] == "02-export-onnx"  # although the torch dir is smaller
    (orin, *_) = picks(rows[:2], 1.20)
    assert orin.ship.row["step"] == "01-quantize" and "no export in this run runs there" in orin.why


def test_no_fit_and_rows_without_a_runtime_say_why():
    legacy = [{k: v for k, v in r.items() if k != "runtime"} for r in ROWS[:2]]
    (orin, *_) = picks(legacy, 1.20)
    assert orin.ship is None and "declares a runtime that runs on orin-nano" in orin.why
    assert ship_table(legacy, 1.20) == [] and "What to ship" not in markdown_report(legacy, "old run")
    only_gpu = [row("00-base", 20.0, 40_000_000, TRT, tokens_per_s=100.0)]
    host = picks(only_gpu, 1.20)[-1]
    assert host.device == "host" and host.ship is None and "no artifact of this run" in host.why


def test_report_md_and_html_show_the_ship_table_and_the_unmeasured_tensorrt_row():
    md = markdown_report(ROWS, "t", ppl_budget=1.20)
    section = md.split("## What to ship, per target device")[1].split("## What each step did")[0]
    assert ("| orin-nano (cpu, nvidia-gpu) | 04-export-gguf | llama.cpp | 04-export-gguf/model.gguf | 4.8 MB | "
            "13,600 projected | 1.060 |") in section
    assert ("| host (cpu) | 03-export-onnx | ONNX Runtime | 03-export-onnx/model.onnx | 5.8 MB | "
            "300 measured |") in section
    trt = [line for line in section.splitlines() if "05-export-tensorrt (not measured)" in line]
    assert len(trt) == 2  # orin-nano and h100, not the host
    assert "12,364 projected" in trt[0] and "not measured here (engine is built on the device)" in trt[0]
    assert "projected 0.91x the pick's projection" in trt[0]
    # the main table says why the TensorRT row has no perplexity, instead of a bare status
    assert "| not measured here (engine is built on the device) |" in md
    page = render_html(ROWS, "t", "<svg></svg>", ppl_budget=1.20)
    assert "What to ship, per target device" in page and '<tr class="unmeasured"><td class="text">orin-nano' in page


def test_ship_table_cells_line_up_with_the_head():
    from evalsuite.summary import SHIP_HEAD

    assert all(len(cells) == len(SHIP_HEAD) for cells, _ in ship_table(ROWS, 1.20))


@pytest.mark.parametrize("device, procs", [("orin-nano", (CPU, NVIDIA_GPU)), ("h200", (NVIDIA_GPU,)), ("host", (CPU,))])
def test_devices_declare_their_processors(device, procs):
    from evalsuite.hardware import processors

    assert processors(device) == procs


def test_rows_without_perplexity_fit_any_budget_and_one_fit_is_named_the_only_one():
    rows = [row("00-base", 20.0, 40_000_000), row("01-export-onnx", 20.0, 6_000_000, ORT, artifact="model.onnx")]
    for r in rows:  # eval.perplexity: false
        r.update(ppl=None, ppl_ratio_to_base=None)
    (orin, h100, host) = picks(rows, 1.10)
    assert orin.ship.row["step"] == "01-export-onnx" and orin.unmeasured == []
    (gpu_only,) = [p for p in picks(rows[1:], 1.10) if p.device == "h100"]
    assert "the only artifact that runs on h100 within 1.10x the base's perplexity (projected decode)" in gpu_only.why
