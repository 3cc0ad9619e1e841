"""The side-by-side benchmark suite around the reference teacher: ours and the peers in one run.

    python bench/run.py            # 49k held-out tokens, the plan's full distillation
    python bench/run.py --quick    # 16k held-out tokens, short distillation: under 10 min on 2 cores
    python bench/run.py --eval-tokens 0   # every held-out token (121k: llama.cpp alone scores at batch 1)

Rows (every speed ratio is to torch fp32 eager of the same model, measured in this run, with
latency rounds that visit every row in turn so load from other processes hits all rows alike):
  reference teacher (6 x 384, ../shared/data/teachers/gpt2-6x384-corpus), ppl on corpus/heldout:
    torch fp32 eager                       the baseline
    torch fp32 static cache                the same weights with a preallocated KV cache
                                           (evalsuite.torch_static), the stronger torch baseline
    torch fp32 static + compile            and its decode step under torch.compile (compiled in the
                                           first latency warm-up; not at GPT-2 small shapes, where
                                           it gained nothing over the static cache)
    ours: pipeline -> ORT int4             the plan bench/pipeline.yaml (prune -> distill -> gptq int4
                                           -> export onnx), run by compress.pipeline; its final artifact
    ours: ORT int8 / ORT int4              export step with ONNX Runtime's MatMulNBits on the fp32 model, run
                                           on its fused decode graph (model_decode.onnx, export.decode_graph)
    ours: ORT int4, plain graph            the same export's model.onnx (OrtRunner): what the fused graph gains
    ours: quantize rtn / gptq int4 -> ORT  the quantize step's integers (g128, the head too; gptq
                                           calibrated on --train) written as MatMulNBits
    peer: optimum + ORT dynamic int8       optimum-cli export onnx, quantize_dynamic with defaults
    peer: optimum ORTQuantizer avx512_vnni optimum's own quantizer, AutoQuantizationConfig.avx512_vnni (dynamic)
    peer: optimum + ORT MatMulNBits int4   ORT's MatMulNBitsQuantizer on optimum's export, as a user would
    peer: bnb int8 / bnb nf4 (torch)       bitsandbytes Linear8bitLt / Linear4bit
    peer: torch dynamic int8               torch.ao dynamic quantization of nn.Linear
    peer: llama.cpp / CTranslate2 / OpenVINO  bench/peers.py in .venv-peers (bench/setup_peers.sh),
                                           measured right after this process's rounds
  GPT-2 small shapes (12 x 768, vocab 50257, random weights; speed only):
    torch fp32 eager, torch fp32 static cache, ours: ORT int8, ours: ORT int4 (fused decode graph),
    ours: ORT int4, plain graph, the llama.cpp / CTranslate2 / OpenVINO peers
and the host's memory-bandwidth roofline for decode next to every row (weight bytes read per token:
every weight except the embedding tables that are only looked up). Writes the table to
bench/results/<date>.md as well as printing it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import importlib.util
import json
import statistics
from dataclasses import replace
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A sibling script is named onnx.py: keep this folder off sys.path so `import onnx` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402

from compress.models import load_model, load_tokenizer, save_model  # noqa: E402
from compress.plan import load_plan  # noqa: E402
from compress.pipeline import run_plan  # noqa: E402
from compress.quantization import QuantizeConfig  # noqa: E402
from evalsuite import cli, hardware  # noqa: E402
from evalsuite.errors import ToolkitError  # noqa: E402
from evalsuite.data import read_text, tokenize  # noqa: E402
from evalsuite.latency import measure_latency  # noqa: E402
from evalsuite.metrics import gpt2_facts, projections  # noqa: E402
from evalsuite.perplexity import perplexity  # noqa: E402
from evalsuite.runner import TorchRunner  # noqa: E402
from evalsuite.torch_static import TorchStaticRunner  # noqa: E402
from evalsuite.size import bytes_on_disk  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
STATIC_LEN = 256  # the static cache's positions: the perplexity windows (256) and prompt + decode (192)
# Held-out tokens scored per row. The full run's 49,152 (40% of corpus/heldout, 192 windows) keep it
# near 20 min on 2 cores: all 121k took llama.cpp alone ~10 min at batch 1, the 2026-12-02 full run
# did not finish in 41. The pipeline's steps are scored on the same tokens.
QUICK_EVAL_TOKENS, FULL_EVAL_TOKENS = 16_384, 49_152


def sibling(name: str):
    """Import bench/<name>.py under another module name (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_onnx = sibling("onnx")
bench_peers = sibling("peers")


# -- building the rows: each returns (runner, artifact path) ----------------------------------------

def torch_quantized(model, method: str, out: Path):
    from compress.quantization import QuantizeConfig, quantize

    # a peer: what torch.ao / bitsandbytes give a user, without our activation-outlier check
    peer = {"allow_outliers": True} if method == "dynamic-int8" else {}
    path = save_model(quantize(copy.deepcopy(model), QuantizeConfig(method=method, **peer)), out)
    return TorchRunner(load_model(path)), path


def torch_static(model, compile: str | None = None) -> TorchStaticRunner:
    return TorchStaticRunner(model, max_len=min(STATIC_LEN, model.config.n_positions), compile=compile)


def peer_matmulnbits(model_dir: Path, out: Path):
    """optimum-cli export, then ORT's MatMulNBitsQuantizer (int4, block 128) on it, as a user would."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(bench_onnx.optimum_export(model_dir, out))), block_size=128,
                                     is_symmetric=True)
    quantizer.process()
    path = out / "model_int4.onnx"
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    return bench_onnx.OrtRunner(path), path


def peer_ortquantizer(model_dir: Path, out: Path):
    """optimum-cli export, then optimum's ORTQuantizer with AutoQuantizationConfig.avx512_vnni (dynamic,
    per tensor), as optimum's quantization guide shows."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from export.passes import quiet

    quantizer = ORTQuantizer.from_pretrained(bench_onnx.optimum_export(model_dir, out).parent, file_name="model.onnx")
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    with quiet("optimum.onnxruntime.quantization"):
        quantizer.quantize(save_dir=out, quantization_config=config)
    path = out / "model_quantized.onnx"
    return bench_onnx.OrtRunner(path), path


def pipeline_overrides(quick: bool, eval_tokens: int) -> list[str]:
    """The --set overrides of bench/pipeline.yaml in this bench; bench/speculative.py uses the same, so
    its reused run directory is current (steps and their evaluation) and nothing is redone."""
    overrides = [f"data.eval.max_tokens={eval_tokens or 'null'}", "eval.samples=null", "eval.latency.repeats=3"]
    return overrides + (["steps.1.distill.tokens=16384"] if quick else [])


def pipeline(plan_path: Path, overrides: list[str], out: Path):
    """Run the pipeline plan (bench/pipeline.yaml) with the plan runner; its last ONNX step is the row."""
    result = run_plan(load_plan(plan_path, overrides), out / "pipeline", progress=False)
    last = [m for m in result.metrics if m["backend"] == "onnxruntime"][-1]
    path = out / "pipeline" / last["step"] / "model.onnx"
    summary = {m["step"]: m["summary"] for m in result.metrics}
    return bench_onnx.open_runner(path), path, summary  # its fused decode graph, as the plan measured it


# -- measuring -------------------------------------------------------------------------------------

def latency_rounds(runners: dict, rounds: int, new_tokens: int) -> dict[str, dict]:
    runs: dict[str, list] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            runs[name].append(measure_latency(runner, prompt=128, new_tokens=new_tokens, repeats=1, warmup=1,
                                              progress=False))
    return {k: {"prefill_ms": statistics.median(r.prefill_ms["p50"] for r in v),
                "decode_ms": statistics.median(r.decode_ms_per_token["p50"] for r in v)} for k, v in runs.items()}


def measure_suite(label: str, model, builders: dict, eval_ids, args) -> list[dict]:
    rows, runners = {}, {}
    for name, build in builders.items():
        runner, path = build()
        runners[name] = runner
        row = rows[name] = {"suite": label, "row": name, "bytes": bytes_on_disk(path, weights_only=True)}
        if eval_ids is not None:
            row["ppl"] = perplexity(runner, eval_ids, seq_len=256, batch_size=8, progress=False).ppl
        config = model.config.to_dict() if name != "ours: pipeline -> ORT int4" else json.loads(
            (path.parent / "config.json").read_text())
        facts = replace(gpt2_facts(config, row["bytes"]), gathered_bytes=getattr(runner, "gathered_weight_bytes", 0))
        row["roofline_tok_s"] = projections(facts, (hardware.HOST,), context=128 + args.new_tokens)[hardware.HOST]
        print(f"  {label}: built {name} ({row['bytes'] / 1e6:.1f} MB"
              + (f", ppl {row['ppl']:.2f})" if "ppl" in row else ")"), file=sys.stderr, flush=True)
    for name, lat in latency_rounds(runners, args.rounds, args.new_tokens).items():
        rows[name].update(lat, compile_s=getattr(runners[name], "compile_s", 0.0))
    return list(rows.values())


def gpt2_small_rows(ours, tmp: Path, args) -> list[dict]:
    """Speed only: GPT-2 small's shapes (12 x 768, vocab 50257) with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    small = GPT2LMHeadModel(GPT2Config()).eval()
    small_dir = save_model(small, tmp / "gpt2-small")
    small_rows = {
        "torch fp32 eager": lambda: (TorchRunner(small), small_dir),
        "torch fp32 static cache": lambda: (torch_static(small), small_dir),
        "ours: ORT int8 (MatMulNBits)": lambda: ours(small, "ort-int8", "s8"),
        "ours: ORT int4 (MatMulNBits)": lambda: ours(small, "ort-int4", "s4"),
        "ours: ORT int4, plain graph": lambda: ours(small, "ort-int4", "s4p", plain=True),
    }
    return measure_suite("gpt2-small shapes", small, small_rows, None, args) + peers(
        "gpt2-small shapes", small_dir, DATA / "gpt2-tokenizer", None, tmp / "peers-small", args)


def peers(label: str, model_dir: Path, tokenizer_dir: Path, eval_ids, work: Path, args) -> list[dict]:
    """The llama.cpp / CTranslate2 / OpenVINO rows, from their own venv's process (bench/peers.py)."""
    if args.skip_peers:
        return []
    rows = bench_peers.peer_rows(label, model_dir, tokenizer_dir, eval_ids, args.rounds, args.new_tokens,
                                 torch.get_num_threads(), work, python=args.peers_python)
    config = json.loads((model_dir / "config.json").read_text())
    for row in rows:
        if "bytes" in row:  # every byte counted: the peers' embedding tables are not told apart
            row["roofline_tok_s"] = projections(gpt2_facts(config, row["bytes"]), (hardware.HOST,),
                                                context=128 + args.new_tokens)[hardware.HOST]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | row | weights MB | ppl | ppl / teacher | prefill x torch | decode x torch | "
             "decode x best torch | decode x fastest peer | decode tok/s | host roofline tok/s | measured / roofline |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(r["suite"] for r in rows):
        suite = [r for r in rows if r["suite"] == label]
        base = suite[0]  # torch fp32 eager
        best_torch = min(r["decode_ms"] for r in suite if r["row"].startswith("torch fp32"))
        peer_ms = [r["decode_ms"] for r in suite if r["row"].startswith("peer:") and "decode_ms" in r]
        fastest = min(peer_ms, default=None)
        for r in suite:
            if "decode_ms" not in r:  # a peer that was not measured: the reason, no number
                why = r.get("error", "not measured").replace("|", "/")
                lines.append(f"| {label} | {r['row']} ({why}) |" + " – |" * 10)
                continue
            tok_s = 1e3 / r["decode_ms"]
            ppl = f"{r['ppl']:.2f}" if "ppl" in r else "–"
            ratio = f"{r['ppl'] / base['ppl']:.3f}" if "ppl" in r else "–"
            vs_peer = f"{fastest / r['decode_ms']:.2f}" if fastest else "–"
            lines.append(f"| {label} | {r['row']} | {r['bytes'] / 1e6:.1f} | {ppl} | {ratio} | "
                         f"{base['prefill_ms'] / r['prefill_ms']:.2f} | {base['decode_ms'] / r['decode_ms']:.2f} | "
                         f"{best_torch / r['decode_ms']:.2f} | {vs_peer} | {tok_s:.1f} | {r['roofline_tok_s']:.0f} | "
                         f"{tok_s / r['roofline_tok_s']:.0%} |")
    notes = {r["row"]: r["note"] for r in rows if r.get("note")}
    return "\n".join(lines + ([""] + [f"- {k}: {v}" for k, v in notes.items()] if notes else []))


def main(argv=None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv=None) -> int:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python bench/run.py", description=__doc__.splitlines()[0]))
    p.add_argument("--quick", action="store_true", help="16k eval tokens, short distillation, 3 latency rounds")
    p.add_argument("--eval-tokens", type=int, help=f"held-out tokens every row is scored on (default "
                   f"{QUICK_EVAL_TOKENS} quick, {FULL_EVAL_TOKENS} full; 0: all of them)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where <date>.md is written")
    p.add_argument("--teacher", type=Path, default=TEACHER, help="the model (default: the reference teacher)")
    p.add_argument("--heldout", type=Path, default=DATA / "corpus" / "heldout", help="evaluation text")
    p.add_argument("--train", type=Path, default=DATA / "corpus" / "train", help="calibration text (gptq row)")
    p.add_argument("--pipeline", type=Path, default=HERE / "pipeline.yaml", help="the plan of the pipeline row")
    p.add_argument("--work", type=Path, help="keep the pipeline's run directory here (bench/speculative.py --work "
                                             "reuses it as its draft); default: a temporary dir")
    p.add_argument("--skip-gpt2-small", action="store_true", help="leave out the GPT-2 small latency rows")
    p.add_argument("--skip-peers", action="store_true", help="leave out the llama.cpp / CTranslate2 / OpenVINO rows")
    p.add_argument("--peers-python", type=Path, default=bench_peers.VENV_PYTHON,
                   help="the peers' venv python (bench/setup_peers.sh)")
    args = p.parse_args(argv)
    if not (args.teacher / "config.json").exists():
        raise ToolkitError(f"teacher not found at {args.teacher} (the reference needs ../shared/data beside the repo)")
    args.new_tokens, args.rounds = (16, 3) if args.quick else (64, 7)
    if args.eval_tokens is None:
        args.eval_tokens = QUICK_EVAL_TOKENS if args.quick else FULL_EVAL_TOKENS
    if args.eval_tokens < 0:
        raise ToolkitError(f"--eval-tokens {args.eval_tokens}: must be >= 0 (0: all held-out tokens)")
    started = datetime.datetime.now()
    teacher = load_model(args.teacher)
    eval_ids = tokenize(read_text(args.heldout), load_tokenizer(args.teacher))
    eval_ids = eval_ids[:args.eval_tokens] if args.eval_tokens else eval_ids
    ExportConfig = bench_onnx.ExportConfig
    notes: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        tmp = Path(tmp)

        def ours(model, method, name, plain=False):
            """ONNX Runtime's quantizer `method` (ort-int4 / ort-int8) applied by the export's graph pass."""
            (tmp / name).mkdir()
            runner = bench_onnx.ours(model, ExportConfig(), {}, tmp / name, plain,  # fused decode graph unless plain
                                     QuantizeConfig(method=method))
            return runner, runner.path

        @functools.cache
        def calib_ids():  # tokenized once, for the rows that calibrate
            return tokenize(read_text(args.train)[:2_000_000], load_tokenizer(args.teacher))  # ~500k tokens

        def quant_step_int4(method: str, calibrates: bool):
            runner, _ = bench_onnx.pipeline_int4(teacher, tmp / f"q4-{method}", method,
                                                 calib_ids() if calibrates else None)
            return runner, runner.path

        def run_pipeline():
            runner, path, notes["pipeline"] = pipeline(args.pipeline, pipeline_overrides(args.quick, args.eval_tokens),
                                                       args.work or tmp)
            return runner, path

        teacher_rows = {
            "torch fp32 eager": lambda: (TorchRunner(teacher), args.teacher),
            "torch fp32 static cache": lambda: (torch_static(teacher), args.teacher),
            "torch fp32 static + compile": lambda: (torch_static(teacher, "default"), args.teacher),
            "ours: pipeline -> ORT int4": run_pipeline,
            "ours: ORT int8 (MatMulNBits)": lambda: ours(teacher, "ort-int8", "t8"),
            "ours: ORT int4 (MatMulNBits)": lambda: ours(teacher, "ort-int4", "t4"),
            "ours: ORT int4, plain graph": lambda: ours(teacher, "ort-int4", "t4p", plain=True),
            "ours: quantize rtn int4 -> ORT": lambda: quant_step_int4("rtn", calibrates=False),
            "ours: quantize gptq int4 -> ORT": lambda: quant_step_int4("gptq", calibrates=True),
            "peer: optimum + ORT dynamic int8": lambda: _peer_dynamic(args.teacher, tmp / "optimum"),
            "peer: optimum ORTQuantizer avx512_vnni": lambda: peer_ortquantizer(args.teacher, tmp / "optimum"),
            "peer: optimum + ORT MatMulNBits int4": lambda: peer_matmulnbits(args.teacher, tmp / "optimum"),
            "peer: bnb int8 (torch)": lambda: torch_quantized(teacher, "bnb-int8", tmp / "bnb8"),
            "peer: bnb nf4 (torch)": lambda: torch_quantized(teacher, "bnb-nf4", tmp / "nf4"),
            "peer: torch dynamic int8": lambda: torch_quantized(teacher, "dynamic-int8", tmp / "dyn8"),
        }
        c = teacher.config
        rows = measure_suite(f"teacher {c.n_layer}x{c.n_embd}", teacher, teacher_rows, eval_ids, args)
        rows += peers(f"teacher {c.n_layer}x{c.n_embd}", args.teacher, args.teacher, eval_ids, tmp / "peers-teacher",
                      args)
        if not args.skip_gpt2_small:
            rows += gpt2_small_rows(ours, tmp, args)


    bandwidth = hardware.measure_host_bandwidth()
    text = "\n".join([
        f"# bench/run.py{' --quick' if args.quick else ''}, {started:%Y-%m-%d %H:%M}",
        "",
        f"Host: {hardware.host_cpu()}, {torch.get_num_threads()} torch threads, copy bandwidth {bandwidth:.1f} GB/s "
        f"(measured); torch {torch.__version__}. Perplexity on {eval_ids.numel():,} tokens of {args.heldout.name} "
        f"(256-token windows). Latency: batch 1, prompt 128, {args.new_tokens} decode steps, median of "
        f"{args.rounds} round-robin rounds. Ratios are to torch fp32 eager of the same model in this run; "
        f"'decode x best torch' to the fastest torch fp32 row (eager or static cache, {STATIC_LEN} positions), "
        f"'decode x fastest peer' to the fastest row named 'peer:'. "
        f"The llama.cpp / CTranslate2 / OpenVINO peers run in their own venv (bench/peers.py), so they "
        f"cannot join those rounds: each suite's peers are measured right after it, with the same "
        f"number of rounds among themselves; ppl is theirs from their own logits, by the same harness.",
        "",
        table(rows),
        "",
        "torch.compile (first compiled decode call): " + ("; ".join(
            f"{r['suite']} {r['row']} {r['compile_s']:.0f} s" for r in rows if r.get("compile_s")) or "none"),
        "",
        "Pipeline steps (bench/pipeline.yaml): " + "; ".join(f"{k}: {v}" for k, v in notes.get("pipeline", {}).items()),
        "",
        f"Wall time: {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min.",
    ])
    write_results(text, args.out, f"{started:%Y-%m-%d}{'-quick' if args.quick else ''}.md")
    return 0


def write_results(text: str, out: Path, filename: str) -> Path:
    """Print a bench's results and write them to out/filename (bench/results/ by default)."""
    print("\n" + text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(text + "\n")
    print(f"\nwritten to {path}", flush=True)
    return path


def _peer_dynamic(model_dir: Path, out: Path):
    runner = bench_onnx.peer(model_dir, out)
    return runner, runner.path


if __name__ == "__main__":
    sys.exit(main())
