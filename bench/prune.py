"""Structured pruning of the reference teacher: perplexity right after pruning (no retraining) for
each importance criterion at several parameter budgets, and latency relative to the unpruned model.

    python bench/prune.py            # all 121k held-out tokens, 32k calibration tokens, 7 latency rounds
    python bench/prune.py --quick    # first 30k held-out tokens, 8k calibration tokens, 3 rounds

Reads ../shared/data relative to the repository: teachers/gpt2-6x384-corpus (evaluated on
corpus/heldout joined with "\\n\\n", 256-token non-overlapping windows; calibrated on corpus/train).
The shape for a budget comes from the step's data-free rule (compress/pruning/shapes.py), so every
criterion prunes to the same shape and latency is measured once per budget. As in the prune step,
LayerNorms are corrected for the removed residual channels (compress/pruning/compensation.py).
Latency ratios come from this one run, teacher and pruned model timed alternately; on a shared CPU
the absolute milliseconds are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from compress.models import load_model, load_tokenizer
from compress.pruning import PruneConfig, Shape, budget_shape, correct_layernorms, select, slice_gpt2
from compress.pruning.api import calibration_batches
from compress.pruning.importance import importance
from evalsuite import cli
from evalsuite.data import read_text, tokenize
from evalsuite.latency import measure_latency
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
CRITERIA = ("magnitude", "taylor", "activation", "random")
KEEPS = (0.9, 0.75, 0.5)


def ppl(model, ids, seq_len):
    return perplexity(TorchRunner(model), ids, seq_len=seq_len, batch_size=8, progress=False).ppl


def latency(model, threads):
    r = measure_latency(TorchRunner(model), prompt=128, new_tokens=32, repeats=1, warmup=1, threads=threads,
                        progress=False)
    return r.prefill_ms["p50"], r.decode_ms_per_token["p50"]


def latency_ratios(base, small, rounds, threads):
    """(prefill, decode) of `small` over `base`: measured alternately, fastest of `rounds` each, so
    load from other processes on a shared CPU hits both models alike."""
    b, s = [], []
    for _ in range(rounds):
        b.append(latency(base, threads))
        s.append(latency(small, threads))
    (bp, bd), (sp, sd) = [tuple(min(col) for col in zip(*runs)) for runs in (b, s)]
    return sp / bp, sd / bd, bp, bd


def main(argv=None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv=None) -> int:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python bench/prune.py", description=__doc__.splitlines()[0]))
    p.add_argument("--quick", action="store_true", help="30k eval tokens, 8k calibration tokens, 3 latency rounds")
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    p.add_argument("--keeps", nargs="+", type=float, default=list(KEEPS))
    p.add_argument("--threads", type=cli.thread_count, default=None, help="torch threads for latency (default: torch's)")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (default: all; 30k with --quick)")
    p.add_argument("--calib-tokens", type=int, default=None, help="calibration tokens (default 32k; 8k with --quick)")
    p.add_argument("--no-latency", action="store_true", help="perplexity only")
    p.add_argument("--round-to", type=int, default=64, help="n_inner multiple, as the prune step's round_to "
                   "(default 64; 1 = the exact budget)")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    eval_tokens = args.eval_tokens or (30_000 if args.quick else None)
    repeats = 3 if args.quick else 7
    cfg = PruneConfig(calib_tokens=args.calib_tokens or (8192 if args.quick else 32768), seq_len=256)

    torch.manual_seed(0)
    model = load_model(TEACHER)
    tok = load_tokenizer(TEACHER)
    held = tokenize(read_text(DATA / "corpus" / "heldout"), tok)[:eval_tokens]
    batches = calibration_batches(tokenize(read_text(DATA / "corpus" / "train"), tok), cfg, model.config.n_positions)
    shape = Shape.of_config(model.config)
    n0 = model.num_parameters()
    base_ppl = ppl(model, held, 256)
    print(f"teacher {shape} ({n0 / 1e6:.1f}M params): ppl {base_ppl:.2f} on {held.numel():,} held-out tokens; "
          f"calibration {sum(b.numel() for b in batches):,} tokens", flush=True)

    targets = {keep: budget_shape(shape, keep, round_to=args.round_to) for keep in args.keeps}
    rows = {}
    for crit in args.criteria:
        t0 = time.perf_counter()
        scores = importance(model, crit, batches, seed=0)
        score_s = time.perf_counter() - t0
        for keep, target in targets.items():
            keep_idx = select(scores, target)
            # as the prune step does: LayerNorms corrected for the removed residual channels
            src = correct_layernorms(model, keep_idx.embd, batches) if target.n_embd < shape.n_embd else model
            small = slice_gpt2(src, keep_idx)
            rows[keep, crit] = (small.num_parameters(), ppl(small, held, 256), score_s)
            print(f"  {crit:<10} keep {keep}: ppl {rows[keep, crit][1]:.1f}", flush=True)
    nan = (float("nan"),) * 4
    lat = {keep: nan if args.no_latency else
           latency_ratios(model, slice_gpt2(model, select(importance(model, "random", None), t)), repeats,
                          args.threads)
           for keep, t in targets.items()}

    print(f"\n| keep | shape (n_head, n_inner) | params kept | criterion | ppl | ppl / teacher "
          f"| prefill / teacher | decode / teacher | scoring s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| 1.0 | {shape} ({shape.n_head}, {shape.n_inner}) | 1.000 | (teacher) | {base_ppl:.1f} "
          "| 1.00 | 1.00 | 1.00 | |")
    for keep, target in targets.items():
        for crit in args.criteria:
            n, p_, score_s = rows[keep, crit]
            print(f"| {keep} | {target} ({target.n_head}, {target.n_inner}) | {n / n0:.3f} | {crit} | {p_:.1f} "
                  f"| {p_ / base_ppl:.2f} | {lat[keep][0]:.2f} | {lat[keep][1]:.2f} "
                  f"| {score_s:.1f} |")
    teacher_ms = ", ".join(f"{v[2]:.1f} ms prefill, {v[3]:.2f} ms/token decode" for v in list(lat.values())[:1])
    print(f"\nlatency: batch 1, prompt 128 tokens then 32 decode steps with the KV cache, threads "
          f"{args.threads or torch.get_num_threads()}; teacher and pruned model measured alternately, fastest of "
          f"{repeats} runs each (teacher: {teacher_ms}); once per shape, the same for every criterion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
