"""Peak RSS of one distillation with DistillConfig's defaults, plain head vs fused head.

    PYTHONPATH=. python bench/distill_memory.py            # both arms, each in its own process
    PYTHONPATH=. python bench/distill_memory.py --arm null  # one arm (false: plain head, null: the default)

The quickstart's shapes with random weights (4x256 teacher -> 4x192 / n_inner 512 student, vocab
4096), DistillConfig() but two optimizer steps and no eval: one micro-batch of 16,384 positions.
Prints the head that ran, the process's peak RSS (ru_maxrss) and seconds per step (a timing only on a
quiet machine), with the CPU.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

ARMS = {"false": False, "null": None}


def run_arm(name: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress import DistillConfig
    from compress.distillation import run_distillation

    torch.set_num_threads(2)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_layer=4, n_embd=256, n_head=8, n_positions=256))
    student = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_layer=4, n_embd=192, n_head=6, n_inner=512,
                                         n_positions=256))
    ids = torch.randint(0, 4096, (200_000,))
    cfg = DistillConfig(tokens=2 * 16384, eval_tokens=0, fused_head=ARMS[name])
    t0 = time.perf_counter()
    _, result = run_distillation(student, teacher, ids, cfg, progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {name} | {'fused' if result.fused_head else 'plain'} | {peak_mb:,.0f} MB | "
          f"{(time.perf_counter() - t0) / result.steps:.1f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", choices=sorted(ARMS), help="run one arm in this process")
    args = p.parse_args(argv)
    if args.arm:
        run_arm(args.arm)
        return 0
    from evalsuite.hardware import host_cpu

    print(f"# {host_cpu()}, 2 torch threads\n\n| fused_head | head that ran | peak RSS | s/step |\n|---|---|---:|---:|")
    for name in ARMS:  # a fresh process per arm: ru_maxrss is the process's peak
        subprocess.run([sys.executable, __file__, "--arm", name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
