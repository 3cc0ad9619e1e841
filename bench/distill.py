"""Distillation recovers what pruning lost: the reference teacher, pruned, then trained two ways.

    python bench/distill.py            # 196,608 training tokens per arm, all of corpus/heldout
    python bench/distill.py --quick    # 24,576 tokens per arm, first 20k held-out tokens

One table, all in one run: the teacher; the pruned student before training; the pruned student after
distillation (KL to the teacher, T=1); the same architecture from random init trained with
cross-entropy only on the same tokens (same loop, batches and schedule); and training tokens/s.
Goal of the issue: distillation recovers >= 80% of the perplexity gap pruning opened and beats
from-scratch training at equal tokens. "Gap recovered" = (ppl_pruned - ppl) / (ppl_pruned - ppl_teacher).

Reads ../shared/data relative to the repository: teachers/gpt2-6x384-corpus, trained on corpus/train,
evaluated on corpus/heldout joined with "\\n\\n" at non-overlapping 256-token windows. Throughput on a
shared CPU is noisy; ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from compress.distillation import DistillConfig, run_distillation
from compress.models import load_model, load_tokenizer
from compress.pruning import PruneConfig, prune
from evalsuite.data import read_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
SEQ_LEN = 256


def ppl(model: GPT2LMHeadModel, ids: torch.Tensor) -> float:
    return perplexity(TorchRunner(model.eval()), ids, seq_len=SEQ_LEN, batch_size=8, progress=False).ppl


def n_params(model: GPT2LMHeadModel) -> int:
    return sum(p.numel() for p in model.parameters())


def train_arm(student, teacher, train_ids, cfg: DistillConfig, progress: bool):
    t0 = time.perf_counter()
    student, result = run_distillation(student.train(), teacher, train_ids, cfg, progress=progress)
    return student, result, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="24,576 training tokens per arm, 20k held-out tokens")
    p.add_argument("--tokens", type=int, default=None, help="training tokens per arm (default 196,608)")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (default: all)")
    p.add_argument("--layers", type=int, default=2, help="teacher blocks the pruning step drops (default 2 of 6)")
    p.add_argument("--mlp", type=float, default=0.0, help="fraction of MLP channels pruned (default 0)")
    p.add_argument("--distill-lr", type=float, default=5e-4)
    p.add_argument("--scratch-lr", type=float, default=1e-3, help="the reference teacher's own training lr")
    p.add_argument("--progress", action="store_true", help="tqdm bars while training")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    tokens = args.tokens or (24_576 if args.quick else 196_608)
    eval_tokens = args.eval_tokens or (20_000 if args.quick else None)

    tokenizer = load_tokenizer(TEACHER)
    train_ids = tokenize(read_text(DATA / "corpus" / "train"), tokenizer)
    held_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tokenizer)[:eval_tokens]
    teacher = load_model(TEACHER)
    pruned = prune(teacher, PruneConfig(importance="activation", layers=args.layers, mlp=args.mlp), train_ids)
    shape = f"{pruned.config.n_layer}x{pruned.config.n_embd}, n_inner {pruned.config.n_inner or 4 * pruned.config.n_embd}"
    print(f"teacher 6x384; pruned student {shape}; {tokens:,} training tokens per arm; "
          f"held-out {held_ids.numel():,} tokens at {SEQ_LEN}-token windows", flush=True)

    base = dict(tokens=tokens, seq_len=SEQ_LEN, batch_size=4, grad_accum=1, warmup_steps=4, eval_tokens=0,
                seed=0)
    kd_cfg = DistillConfig(**base, lr=args.distill_lr, temperature=1.0, loss={"kl": 1.0, "ce": 0.0})
    ce_cfg = DistillConfig(**base, lr=args.scratch_lr, loss={"kl": 0.0, "ce": 1.0})
    ppl_teacher, ppl_pruned = ppl(teacher, held_ids), ppl(pruned, held_ids)
    print(f"teacher ppl {ppl_teacher:.2f}, pruned ppl {ppl_pruned:.2f}", flush=True)

    distilled, kd, kd_s = train_arm(pruned, teacher, train_ids, kd_cfg, args.progress)
    ppl_kd = ppl(distilled, held_ids)
    print(f"distilled ppl {ppl_kd:.2f} ({kd_s:.0f} s)", flush=True)
    torch.manual_seed(0)
    scratch, ce, ce_s = train_arm(GPT2LMHeadModel(pruned.config), teacher, train_ids, ce_cfg, args.progress)
    ppl_ce = ppl(scratch, held_ids)

    gap = ppl_pruned - ppl_teacher

    def recovered(x: float) -> str:
        return f"{(ppl_pruned - x) / gap:.0%}" if gap > 0 else "-"

    rows = [("teacher (6x384)", n_params(teacher), ppl_teacher, "-", "-", "-"),
            (f"pruned {shape}, before training", n_params(pruned), ppl_pruned, "0%", "-", "-"),
            ("pruned, distilled (KL, T=1)", n_params(distilled), ppl_kd, recovered(ppl_kd), f"{kd.tokens:,}",
             f"{kd.tokens_per_s:,.0f}"),
            ("same shape, from scratch (CE only)", n_params(scratch), ppl_ce, recovered(ppl_ce), f"{ce.tokens:,}",
             f"{ce.tokens_per_s:,.0f}")]
    print(f"\n| model | params | held-out ppl | ppl / teacher | gap recovered | train tokens | train tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, params, x, rec, tok, tps in rows:
        print(f"| {name} | {params / 1e6:.2f}M | {x:.2f} | {x / ppl_teacher:.2f} | {rec} | {tok} | {tps} |")
    print(f"\ndistillation: {kd_s:.0f} s; from scratch: {ce_s:.0f} s (the teacher's forward pass is the difference; "
          "throughput is noisy on a shared CPU)")
    goal = ppl_kd < ppl_ce and gap > 0 and (ppl_pruned - ppl_kd) >= 0.8 * gap
    print(f"goal (>= 80% of the gap recovered and better than from scratch): {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
