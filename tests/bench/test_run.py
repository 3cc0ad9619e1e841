"""Smoke test of the benchmark suite's plumbing (bench/run.py) on a tiny model: every row is built,
measured and written. The numbers mean nothing at this size; none is asserted beyond being finite."""

import importlib.util
import math
from pathlib import Path

import pytest

from compress.models import save_model
from tests.tiny_models import tiny_model

BENCH = Path(__file__).resolve().parents[2] / "bench"

PIPELINE = """\
name: smoke
model: {model}
data:
  train: {{path: {train}}}
  eval: {{path: {heldout}, seq_len: 64}}
eval:
  latency: {{prompt: 8, new_tokens: 4, repeats: 1}}
  targets: [host]
steps:
  - prune: {{importance: magnitude, mlp: 0.5}}
  - distill: {{tokens: 2048, seq_len: 64, batch_tokens: 512, eval_tokens: 512, eval_every: 2}}
  - quantize: {{method: rtn, bits: 4, group_size: 32}}
  - export: {{format: onnx}}
"""


@pytest.mark.slow
def test_suite_builds_and_measures_every_row(tmp_path, byte_tokenizer):
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    bench_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_run)

    model_dir = save_model(tiny_model(vocab_size=len(byte_tokenizer), n_embd=128, n_head=4, n_positions=256),
                           tmp_path / "tiny", byte_tokenizer)
    text = "The quick brown fox jumps over the lazy dog, and then it rests.\n\n" * 120
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "heldout.txt").write_text(text[:4000])
    plan = tmp_path / "pipeline.yaml"
    plan.write_text(PIPELINE.format(model=model_dir, train=tmp_path / "train.txt", heldout=tmp_path / "heldout.txt"))

    out = tmp_path / "results"
    assert bench_run.main(["--quick", "--teacher", str(model_dir), "--heldout", str(tmp_path / "heldout.txt"),
                           "--train", str(tmp_path / "train.txt"), "--pipeline", str(plan), "--skip-gpt2-small", "--skip-peers", "--out", str(out)]) == 0
    (result,) = out.glob("*-quick.md")
    table = [line for line in result.read_text().splitlines() if line.startswith("| teacher 2x128 |")]
    assert [line.split(" | ")[1] for line in table] == [
        "torch fp32 eager", "torch fp32 static cache", "torch fp32 static + compile",
        "ours: pipeline -> ORT int4", "ours: ORT int8 (MatMulNBits)",
        "ours: ORT int4 (MatMulNBits)", "ours: ORT int4, plain graph", "ours: quantize rtn int4 -> ORT",
        "ours: quantize gptq int4 -> ORT", "peer: optimum + ORT dynamic int8",
        "peer: optimum ORTQuantizer avx512_vnni", "peer: optimum + ORT MatMulNBits int4", "peer: bnb int8 (torch)",
        "peer: bnb nf4 (torch)", "peer: torch dynamic int8"]
    for line in table:
        ppl, decode_ratio = line.split(" | ")[3], line.split(" | ")[6]
        assert math.isfinite(float(ppl)) and float(decode_ratio) > 0
        assert float(line.split(" | ")[10].rstrip(" |")) > 0  # decode x best torch
    assert table[0].split(" | ")[3] == table[1].split(" | ")[3] == table[2].split(" | ")[3]  # same function
    assert "torch.compile (first compiled decode call): teacher 2x128 torch fp32 static + compile" in result.read_text()
