"""The fused decode graph (model_decode.onnx) vs the plain graph (model.onnx) at GPT-2 124M shapes.

    python bench/decode_graph.py                 # int4 and int8, 5 rounds
    python bench/decode_graph.py --rounds 3 --bits 4

GPT-2 small's shapes (12 x 768, vocab 50257) with random weights, exported like bench/run.py's
gpt2-small rows (ORT's MatMulNBits quantizer, block 128, accuracy_level 4), each as the plain graph
(OrtRunner) and the fused graph (OrtDecodeRunner). Latency as bench/run.py measures it (prompt 128,
greedy decode, batch 1, round-robin rounds, torch's thread count), with its host-roofline column.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # a sibling is named onnx.py

import torch  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", nargs="+", type=int, default=[4, 8], choices=[4, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress.quantization import QuantizeConfig

    ExportConfig = bench_run.bench_onnx.ExportConfig
    torch.manual_seed(0)
    small = GPT2LMHeadModel(GPT2Config()).eval()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        tmp = Path(tmp)

        def ours(bits: int, plain: bool):
            out = tmp / f"int{bits}{'-plain' if plain else ''}"
            out.mkdir()
            runner = bench_run.bench_onnx.ours(small, ExportConfig(), {}, out, plain,
                                               QuantizeConfig(method=f"ort-int{bits}"))
            return runner, runner.path

        rows = {}
        for bits in args.bits:
            rows[f"ORT int{bits}, plain graph"] = lambda b=bits: ours(b, True)
            rows[f"ORT int{bits}, fused decode graph"] = lambda b=bits: ours(b, False)
        results = bench_run.measure_suite("gpt2-small shapes", small, rows, None, args)
    print(f"\n{torch.get_num_threads()} threads, prompt 128, {args.new_tokens} new tokens, median of {args.rounds} rounds")
    print("| row | prefill ms | decode ms/token | tok/s | host roofline tok/s | measured / roofline |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        tok_s = 1e3 / r["decode_ms"]
        print(f"| {r['row']} | {r['prefill_ms']:.1f} | {r['decode_ms']:.2f} | {tok_s:.1f} | "
              f"{r['roofline_tok_s']:.0f} | {tok_s / r['roofline_tok_s']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
