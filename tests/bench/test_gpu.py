"""bench/gpu.py: without CUDA it refuses in one line and writes nothing; `--device cpu --smoke` runs every
code path it would run on a GPU (the plan's torch steps, latency per step and dtype, distillation
throughput, the TensorRT op check) and writes its results file. No number is asserted beyond being finite."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_refuses_and_writes_nothing(tmp_path, capsys):
    gpu = load_script()
    assert gpu.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bench/gpu.py: no CUDA device here")
    assert gpu.main(["--device", "cpu", "--out", str(tmp_path)]) == 1  # cpu measures nothing without --smoke
    assert "add --smoke" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a tokenizer and runs the quickstart's torch steps: ~1-3 min on 2 shared cores
def test_cpu_smoke_runs_every_code_path(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(tmp_path / "r"),
                          "--work", str(tmp_path / "w")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (results,) = (tmp_path / "r").glob("*-gpu-smoke.md")
    text = results.read_text()
    assert "SMOKE RUN on cpu" in text
    rows = [line.split(" | ") for line in text.splitlines() if re.match(r"\| 0\d-", line)]
    steps = {r[0].strip("| ") for r in rows}
    assert steps == {"00-base", "01-prune", "02-distill", "03-quantize-gptq-w4g32"}
    assert {(r[1], r[2]) for r in rows} == {(d, k) for d in ("float16", "bfloat16") for k in ("eager", "static cache")}
    assert all(float(r[4]) > 0 for r in rows)  # decode ms/token of every step, dtype and runner
    assert re.search(r"\| bf16 \| False \| 4,096 \| [\d,]+ \|", text)  # distillation ran (no autocast on CPU)
    assert "- tensorrt fp16 (plain ops): parsable" in text
    assert "- onnxruntime fp16 (fused): " in text and "contrib-op" in text
