"""The torch baselines side by side: fp32 eager (DynamicCache), a static KV cache, and the static cache
with the decode step under torch.compile, on the reference teacher and at GPT-2 124M shapes.

    python bench/torch_static.py            # prompt 128 + 64 decode steps, 5 round-robin rounds
    python bench/torch_static.py --quick    # 16 decode steps, 3 rounds
    python bench/torch_static.py --no-compile
    python bench/torch_static.py --threads 1   # on a busy machine

Same latency protocol as bench/run.py (evalsuite.latency.measure_latency, batch 1, prompt 128, torch's
threads; rounds visit every row in turn) and, on the teacher, the same perplexity harness (first 16k
held-out tokens, 256-token windows) to show the rows compute the same function. The static cache holds
256 positions (bench/run.py's perplexity windows). Compile time is the first compiled decode call.
Writes results/<date>-torch-static[-quick].md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/onnx.py shadows onnx

import torch  # noqa: E402

from compress.models import load_model, load_tokenizer  # noqa: E402
from evalsuite import cli, hardware  # noqa: E402
from evalsuite.data import read_text, tokenize  # noqa: E402
from evalsuite.latency import measure_latency  # noqa: E402
from evalsuite.perplexity import perplexity  # noqa: E402
from evalsuite.runner import TorchRunner  # noqa: E402
from evalsuite.torch_static import TorchStaticRunner  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
MAX_LEN = 256


def torch_rows(model, compile_too: bool) -> dict:
    """The torch rows over one model's weights; each builder is called once."""
    rows = {
        "torch fp32 eager": lambda: TorchRunner(model),
        "torch fp32 static cache": lambda: TorchStaticRunner(model, max_len=MAX_LEN),
    }
    if compile_too:
        rows["torch fp32 static + compile"] = lambda: TorchStaticRunner(model, max_len=MAX_LEN, compile="default")
    return rows


def measure(label: str, model, eval_ids, args) -> list[dict]:
    runners = {name: build() for name, build in torch_rows(model, not args.no_compile).items()}
    rows = {name: {"suite": label, "row": name} for name in runners}
    for name, runner in runners.items():
        if eval_ids is not None:
            rows[name]["ppl"] = perplexity(runner, eval_ids, seq_len=MAX_LEN, batch_size=8, progress=False).ppl
        t0 = time.perf_counter()
        measure_latency(runner, prompt=128, new_tokens=2, repeats=1, warmup=0, progress=False)  # compiles, if any
        rows[name]["first_run_s"] = time.perf_counter() - t0
        rows[name]["compile_s"] = getattr(runner, "compile_s", 0.0)
        print(f"  {label}: {name} ready in {rows[name]['first_run_s']:.1f} s", file=sys.stderr, flush=True)
    for name, lat in bench_run().latency_rounds(runners, args.rounds, args.new_tokens).items():
        rows[name].update(lat)  # prefill_ms, decode_ms: medians over the rounds
    print(table(list(rows.values())), file=sys.stderr, flush=True)  # each suite as soon as it is measured
    return list(rows.values())


def bench_run():
    """bench/run.py as a module (bench/ is not a package), for its round-robin latency protocol."""
    spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(rows: list[dict]) -> str:
    lines = ["| model | row | ppl | prefill ms | decode ms/token | decode tok/s | decode x eager | "
             "decode x best torch | compile s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(r["suite"] for r in rows):
        suite = [r for r in rows if r["suite"] == label]
        eager, best = suite[0], min(r["decode_ms"] for r in suite)
        for r in suite:
            ppl = f"{r['ppl']:.3f}" if "ppl" in r else "–"
            comp = f"{r['compile_s']:.0f}" if r["compile_s"] else "–"
            lines.append(f"| {label} | {r['row']} | {ppl} | {r['prefill_ms']:.1f} | {r['decode_ms']:.2f} | "
                         f"{1e3 / r['decode_ms']:.1f} | {eager['decode_ms'] / r['decode_ms']:.2f} | "
                         f"{best / r['decode_ms']:.2f} | {comp} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv=None) -> int:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python bench/torch_static.py", description=__doc__.splitlines()[0]))
    p.add_argument("--quick", action="store_true", help="16 decode steps, 3 rounds")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--teacher", type=Path, default=TEACHER)
    p.add_argument("--heldout", type=Path, default=DATA / "corpus" / "heldout")
    p.add_argument("--skip-gpt2-small", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--threads", type=cli.thread_count, default=None, help="torch threads (default: torch's own; on a busy "
                                                             "machine 1 avoids OpenMP spin-waiting)")
    args = p.parse_args(argv)
    if not (args.teacher / "config.json").exists():
        print(f"teacher not found at {args.teacher} (the reference needs ../shared/data beside the repo)",
              file=sys.stderr)
        return 1
    args.new_tokens, args.rounds = (16, 3) if args.quick else (64, 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = datetime.datetime.now()
    load = os.getloadavg()
    teacher = load_model(args.teacher)
    eval_ids = tokenize(read_text(args.heldout), load_tokenizer(args.teacher))[:16_384]
    c = teacher.config
    rows = measure(f"teacher {c.n_layer}x{c.n_embd}", teacher, eval_ids, args)
    if not args.skip_gpt2_small:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        rows += measure("gpt2-small shapes", GPT2LMHeadModel(GPT2Config()).eval(), None, args)
    text = "\n".join([
        f"# bench/torch_static.py{' --quick' if args.quick else ''}, {started:%Y-%m-%d %H:%M}",
        "",
        f"Host: {hardware.host_cpu()}, {torch.get_num_threads()} torch threads, load average {load[0]:.2f} at the "
        f"start (shared machine: indicative); torch {torch.__version__}. Latency: batch 1, prompt 128, "
        f"{args.new_tokens} greedy decode steps, median of {args.rounds} round-robin rounds. Static cache: "
        f"{MAX_LEN} positions. ppl: first {eval_ids.numel():,} tokens of {args.heldout.name}, {MAX_LEN}-token "
        "windows. compile s: the first compiled decode call.",
        "",
        table(rows),
        "",
        f"Wall time: {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min.",
    ])
    bench_run().write_results(text, args.out, f"{started:%Y-%m-%d}-torch-static{'-quick' if args.quick else ''}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
