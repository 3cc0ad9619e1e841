"""AdamW vs Muon pretraining the quickstart's teacher: held-out perplexity at a token budget.

    PYTHONPATH=. python bench/pretrain_optimizer.py                      # the arms of the results file
    PYTHONPATH=. python bench/pretrain_optimizer.py --arm muon:450000:6e-3 --arm adamw:1200000:2e-3

The quickstart's model and data (4x256 GPT-2, a 4096-token BPE trained on CPython's python-docs
train split, batch 16 x 128, warm-up 30, cosine to 0.1), no in-training eval; perplexity over every
128-token window of the held-out split (what the report measures). One JSON line per arm, with its
wall time (a timing only on a quiet machine) and the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from compress.pretrain import gpt2_config, pretrain, train_tokenizer
from compress.source_config import PretrainConfig, TrainTokenizer
from compress.training import heldout_loss
from evalsuite import data as evaldata
from evalsuite.hardware import host_cpu

ARMS = ["adamw:600000:2e-3", "adamw:600000:4e-3", "muon:600000:2e-3", "muon:600000:4e-3",
        "muon:300000:4e-3", "muon:300000:8e-3", "muon:400000:6e-3"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", help="optimizer:tokens:lr (repeatable; default: the results file's)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_text = evaldata.builtin_text("python-docs", "train")
    held_text = evaldata.builtin_text("python-docs", "heldout")
    tok = train_tokenizer(train_text, TrainTokenizer(vocab_size=4096))
    train_ids, held_ids = evaldata.tokenize(train_text, tok), evaldata.tokenize(held_text, tok)
    print(f"# {host_cpu()}, {args.threads} torch threads, torch {torch.__version__}", flush=True)
    for arm in args.arm or ARMS:
        optimizer, tokens, lr = arm.split(":")
        cfg = PretrainConfig(n_layer=4, n_embd=256, n_head=8, n_positions=256, seq_len=128, batch_size=16,
                             tokens=int(tokens), lr=float(lr), warmup_steps=30, optimizer=optimizer,
                             eval_every=10**6)
        t0 = time.perf_counter()
        model = pretrain(cfg, gpt2_config(cfg, len(tok), tok.eos_token_id), train_ids, progress=False)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            ppl = math.exp(heldout_loss(model, held_ids, 128, max_blocks=10**9))
        print(json.dumps({"optimizer": optimizer, "tokens": int(tokens), "lr": float(lr), "heldout_ppl": round(ppl, 2),
                          "wall_s": round(wall, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
