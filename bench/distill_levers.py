"""One distillation lever at a time on the reference teacher: prune, distil, held-out ppl, tokens/s.

    python bench/distill_levers.py --importance taylor --mlp 0.5 --tokens 32768 --batch-tokens 2048
    python bench/distill_levers.py --importance activation --mlp 0 --fused-head --lr 1e-3

Prints one JSON line: the settings, held-out ppl of the pruned student before and after training
(and the teacher's on the same tokens), the training tokens and tokens/s, and the load average at
start and end (the machine is shared: compare tokens/s only within one run or at equal load;
perplexity at equal tokens is deterministic). The pruned student is cached in --cache so that
several arms on one shape prune once. Quality is ranked on the first --eval-tokens of
corpus/heldout (256-token non-overlapping windows, as bench/distill.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from compress.distillation import DistillConfig, run_distillation
from compress.models import load_model, load_tokenizer, save_model
from compress.pruning import PruneConfig, prune
from evalsuite.data import read_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
SEQ_LEN = 256


def ppl(model, ids) -> float:
    return perplexity(TorchRunner(model.eval()), ids, seq_len=SEQ_LEN, batch_size=8, progress=False).ppl


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--importance", default="taylor", choices=("taylor", "activation", "magnitude"))
    p.add_argument("--width", type=float, default=0.33, help="prune width (0.33: 6 -> 4 heads, n_embd 256)")
    p.add_argument("--mlp", type=float, default=0.5)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ce", type=float, default=0.0, help="weight of the CE term beside KL 1.0")
    p.add_argument("--fused-head", action="store_true")
    p.add_argument("--eval-tokens", type=int, default=16384, help="first N tokens of heldout (0: all)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/distill-levers"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    load0 = os.getloadavg()[0]
    tok = load_tokenizer(TEACHER)
    train_ids = tokenize(read_text(DATA / "corpus" / "train"), tok)
    held = tokenize(read_text(DATA / "corpus" / "heldout"), tok)[:args.eval_tokens or None]
    teacher = load_model(TEACHER).eval()
    pruned_dir = args.cache / f"{args.importance}-w{args.width}-m{args.mlp}"
    t0 = time.perf_counter()
    if (pruned_dir / "config.json").exists():
        student = load_model(pruned_dir)
    else:
        student = prune(teacher, PruneConfig(importance=args.importance, width=args.width, mlp=args.mlp), train_ids)
        save_model(student, pruned_dir, tok)
    prune_s = time.perf_counter() - t0
    before = ppl(student, held)
    cfg = DistillConfig(tokens=args.tokens, seq_len=SEQ_LEN, batch_tokens=args.batch_tokens, lr=args.lr,
                        warmup_steps=args.warmup, min_lr_ratio=args.min_lr_ratio, temperature=args.temperature,
                        loss={"kl": 1.0, "ce": args.ce}, eval_tokens=0, fused_head=args.fused_head, seed=0)
    t0 = time.perf_counter()
    student, result = run_distillation(student.train(), teacher, train_ids, cfg, progress=False)
    train_s = time.perf_counter() - t0
    after = ppl(student, held)
    row = {"tag": args.tag, "importance": args.importance, "width": args.width, "mlp": args.mlp,
           "shape": f"{student.config.n_layer}x{student.config.n_embd}/{student.config.n_inner}",
           "params_M": round(student.num_parameters() / 1e6, 2), "tokens": result.tokens,
           "batch_tokens": args.batch_tokens, "steps": result.steps, "lr": args.lr, "warmup": args.warmup,
           "T": args.temperature, "ce": args.ce, "fused_head": args.fused_head,
           "ppl_teacher": round(ppl(teacher, held), 2), "ppl_pruned": round(before, 2), "ppl": round(after, 2),
           "eval_tokens": held.numel(), "tok_s": round(result.tokens_per_s, 1), "train_s": round(train_s),
           "prune_s": round(prune_s), "threads": torch.get_num_threads(), "load": [round(load0, 1),
                                                                                  round(os.getloadavg()[0], 1)]}
    row["ratio"] = round(after / row["ppl_teacher"], 3)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
