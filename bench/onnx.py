"""ONNX export and ONNX Runtime decode speed vs torch eager and vs the peer path, with perplexity.

    python bench/onnx.py            # reference teacher + GPT-2 small shapes, full held-out text
    python bench/onnx.py --quick    # 16k eval tokens, 16 decode steps, 5 rounds

One table per model, every row measured in the same run with the same threads:
  torch fp32 eager            TorchRunner over the HF model (the baseline of the ratios)
  (our rows run what the export step ships, opened like the plan runner opens it: the fused
   model_decode.onnx beside model.onnx, export.decode_graph; the peer row runs optimum's model.onnx)
  ORT fp32                    our export: optimum trace, Gemm->MatMul, folded head, ORT fusions
                              (quantized rows skip the Python fusions unless ", fused")
  ORT dynamic int8            + quantize_dynamic on MatMul, per tensor
  ORT int8 / ORT int4         + MatMulNBits (block 128, symmetric, accuracy_level 4)
  pipeline int4 rtn g128      quantize step (RTN int4, group 128, LM head too) -> MatMulNBits from
                              its integers
  peer: optimum-cli + dynamic `optimum-cli export onnx --task text-generation-with-past`, then
                              onnxruntime.quantization.quantize_dynamic with its default settings

Models: teachers/gpt2-6x384-corpus from ../shared/data (perplexity on corpus/heldout joined with
"\\n\\n", 256-token windows), and a randomly initialised GPT-2 small (12 x 768, vocab 50257) for
speed only (its perplexity means nothing and is not shown). Latency is prefill of 128 tokens and
greedy decode with the KV cache, batch 1. The CPU is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# This script is named onnx.py: keep its folder off sys.path so `import onnx` finds the onnx package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from compress.models import load_model, load_tokenizer, save_model  # noqa: E402
from evalsuite import cli  # noqa: E402
from evalsuite.data import read_text, tokenize  # noqa: E402
from evalsuite.latency import measure_latency  # noqa: E402
from evalsuite.perplexity import perplexity  # noqa: E402
from evalsuite.runner import TorchRunner  # noqa: E402
from export.onnx import save_onnx  # noqa: E402
from export.ort_runner import OrtRunner, open_runner  # noqa: E402
from compress.quantization import QuantizeConfig  # noqa: E402
from export.step import ExportConfig, build_graph  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
log = logging.getLogger("bench.onnx")

# row -> (the export, the quantize step before it: ONNX Runtime's quantizers are methods ort-* whose layout
# the export applies in the graph; ort-dynamic-int8 with allow_outliers: the bench measures, it does not gate)
OURS = {
    "ORT fp32": (ExportConfig(), None),
    "ORT dynamic int8": (ExportConfig(), QuantizeConfig(method="ort-dynamic-int8", allow_outliers=True)),
    "ORT dynamic int8, fused": (ExportConfig(optimize=True),
                                QuantizeConfig(method="ort-dynamic-int8", allow_outliers=True)),
    "ORT int8 (MatMulNBits)": (ExportConfig(), QuantizeConfig(method="ort-int8")),
    "ORT int4 (MatMulNBits)": (ExportConfig(), QuantizeConfig(method="ort-int4")),
    "ORT int4 (MatMulNBits), fused": (ExportConfig(optimize=True), QuantizeConfig(method="ort-int4")),
}
ROWS = ["torch fp32 eager", *OURS, "pipeline int4 rtn g128 (+head)", "peer: optimum-cli + dynamic"]


def ours(model, cfg: ExportConfig, records: dict, out: Path, plain: bool = False,
         method: "QuantizeConfig | None" = None):
    """What the export step ships: model.onnx and, unless `plain`, the fused model_decode.onnx beside it,
    opened as the plan runner opens it (the fused graph's runner when there is one). `method`: a quantize
    step applied to a copy of the model first (the ort-* methods: the export's graph pass quantizes)."""
    from export.decode_graph import DECODE_FILE, build_for_export

    if method is not None:
        from compress.quantization import quantize

        model = quantize(copy.deepcopy(model), method)

    graph, _ = build_graph(cfg, model, records, log)
    path = save_onnx(graph, out / "model.onnx")
    del graph
    (out / "config.json").write_text(model.config.to_json_string())
    if plain:
        return OrtRunner(path)
    decode, _ = build_for_export(cfg, model, records)
    if decode is not None:
        save_onnx(decode, out / DECODE_FILE)
    return open_runner(path)


def pipeline_int4(model, out: Path, method: str = "rtn", calib=None) -> tuple[OrtRunner, TorchRunner]:
    """The plan's path: quantize step (int4 g128, the head too; `calib`: token ids for gptq), saved and
    reloaded, then exported from its integers."""
    from compress.quantization import QuantizeConfig, quantize, quantized_linears

    cfg = QuantizeConfig(method=method, bits=4, group_size=128, lm_head="int4")
    qdir = save_model(quantize(copy.deepcopy(model), cfg, calib), out / "quantized")
    qmodel = load_model(qdir)
    runner = ours(qmodel, ExportConfig(), quantized_linears(qdir), out / "onnx")
    return runner, TorchRunner(qmodel)


def optimum_export(model_dir: Path, out: Path) -> Path:
    """`optimum-cli export onnx --task text-generation-with-past` into out/ (model.onnx, config.json)."""
    if not (out / "model.onnx").is_file():
        subprocess.run(["optimum-cli", "export", "onnx", "--model", str(model_dir), "--task",
                        "text-generation-with-past", str(out)], check=True, capture_output=True)
    return out / "model.onnx"


def peer(model_dir: Path, out: Path) -> OrtRunner:
    """What a user does today: optimum-cli export, then ORT's quantize_dynamic with default settings."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(optimum_export(model_dir, out), out / "model_int8.onnx")
    return OrtRunner(out / "model_int8.onnx")


def round_robin_latency(runners: dict, args) -> dict[str, dict]:
    """Prefill ms and decode tokens/s per runner, medians over rounds that visit every runner in turn,
    so a burst of load from other processes hits every row alike."""
    runs: dict[str, list] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            runs[name].append(measure_latency(runner, prompt=128, new_tokens=args.new_tokens, repeats=1,
                                              warmup=1, threads=args.threads, progress=False))
    return {name: {"prefill_ms": statistics.median(r.prefill_ms["p50"] for r in rs),
                   "decode_tok_s": statistics.median(r.tokens_per_s for r in rs)} for name, rs in runs.items()}


def bench_model(label: str, model, model_dir: Path, eval_ids, rows: list[str], args) -> list[dict]:
    results, runners = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for i, row in enumerate(rows):
            out = Path(tmp) / f"row{i}"
            out.mkdir()
            r = results[row] = {"model": label, "row": row, "ppl": None}
            if row == "torch fp32 eager":
                runner = TorchRunner(model)
            elif row in OURS:
                runner = ours(model, OURS[row][0], {}, out, method=OURS[row][1])
            elif row.startswith("pipeline"):
                runner, torch_q = pipeline_int4(model, out)
                if eval_ids is not None:
                    r["torch_ppl"] = perplexity(torch_q, eval_ids, seq_len=256, batch_size=8, progress=False).ppl
            else:
                runner = peer(model_dir, out)
            if runner.backend == "onnxruntime":
                r["mib"] = runner.path.stat().st_size / 2**20
            if eval_ids is not None:
                r["ppl"] = perplexity(runner, eval_ids, seq_len=256, batch_size=8, progress=False).ppl
            runners[row] = runner
            print(f"  {label}: built {row}", file=sys.stderr, flush=True)
        for row, lat in round_robin_latency(runners, args).items():
            results[row].update(lat)
            print(f"  {label}: {results[row]}", file=sys.stderr, flush=True)
    return list(results.values())


def print_table(results: list[dict]) -> None:
    print("\n| model | runtime | ppl | prefill ms | decode tok/s | x torch | x peer | .onnx MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == label]
        base = next((r for r in rows if r["row"] == "torch fp32 eager"), None)
        peer_r = next((r for r in rows if r["row"].startswith("peer")), None)
        for r in rows:
            ppl = "–" if r["ppl"] is None else f"{r['ppl']:.2f}"
            if r.get("torch_ppl"):
                ppl += f" (torch {r['torch_ppl']:.2f})"
            x_t = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}" if base else "–"
            x_p = f"{r['decode_tok_s'] / peer_r['decode_tok_s']:.2f}" if peer_r else "–"
            mib = f"{r['mib']:.0f}" if "mib" in r else "–"
            print(f"| {label} | {r['row']} | {ppl} | {r['prefill_ms']:.1f} | {r['decode_tok_s']:.1f} | {x_t} | {x_p} | {mib} |")


def main(argv=None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv=None) -> int:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python bench/onnx.py", description=__doc__.splitlines()[0]))
    p.add_argument("--quick", action="store_true", help="16k eval tokens, 16 decode steps, 5 rounds")
    p.add_argument("--models", nargs="+", default=["teacher", "gpt2-small"], choices=["teacher", "gpt2-small"])
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS, metavar="ROW")
    p.add_argument("--threads", type=cli.thread_count, default=None, help="intra-op threads for torch and ORT (default: torch's)")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    args.new_tokens, args.repeats = (16, 5) if args.quick else (64, 10)
    if args.threads:
        torch.set_num_threads(args.threads)  # OrtRunner pins ORT to torch's thread count
    eval_tokens = 16_384 if args.quick else None
    eval_ids = tokenize(read_text(DATA / "corpus" / "heldout"), load_tokenizer(TEACHER))[:eval_tokens]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; eval {eval_ids.numel():,} held-out "
          f"tokens (seq_len 256); latency: prompt 128, {args.new_tokens} new tokens, {args.repeats} repeats, batch 1")
    results = []
    if "teacher" in args.models:
        results += bench_model("teacher 6x384", load_model(TEACHER), TEACHER, eval_ids, args.rows, args)
    if "gpt2-small" in args.models:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        small = GPT2LMHeadModel(GPT2Config()).eval()  # 12 x 768, vocab 50257, random weights
        with tempfile.TemporaryDirectory(prefix="gpt2-small-") as d:
            save_model(small, d, load_tokenizer(TEACHER))
            results += bench_model("gpt2-small shapes", small, Path(d), None, args.rows, args)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
