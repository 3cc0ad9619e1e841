"""Training around compression on the reference teacher: fine-tuning (full vs LoRA), QAT vs PTQ, fp32 vs bf16.

    python bench/training.py            # 32,768 training tokens per arm, 16,384 held-out tokens
    python bench/training.py --tokens 8192 --eval-tokens 8192   # what fits a loaded 2-core VM
    python bench/training.py --only qat --outliers   # QAT vs PTQ on the teacher with planted outliers

Three tables, all in one run, written to bench/results/<date>-training.md:

1. Fine-tuning on one author's text (corpus/train/<author>, held out: corpus/heldout/<author>):
   held-out ppl before / after, full fine-tuning vs LoRA r=8 and r=16 (merged), trainable parameters,
   training tokens/s. Through compress.finetune (the step's own loop).
2. QAT vs PTQ at int4 g128 (RTN and GPTQ): held-out ppl of the teacher, of the PTQ model and of the
   same model after QAT (compress.qat: on the PTQ grid, scales learned unless --qat-scales frozen, KL to the
   teacher at T=1, on corpus/train; bench/qat.py measures the QAT choices one arm at a time);
   "gap recovered" = (ppl_ptq - ppl_qat) / (ppl_ptq - ppl_teacher) (issue 27's target: >= 50%).
3. fp32 vs bf16 autocast (amp: bf16) for distillation at equal tokens: a 4-block student built from
   teacher blocks, distilled (KL, T=1); tokens/s and held-out ppl.

Reads ../shared/data relative to the repository. Held-out ppl: corpus/heldout (or the author's file)
at non-overlapping 256-token windows. Timings on a shared CPU are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path

import torch

from compress.distillation import DistillConfig, StudentInit, run_distillation, student_from_teacher
from compress.finetune.config import FinetuneConfig
from compress.finetune.loop import run_finetune
from compress.models import load_model, load_tokenizer
from compress.qat.config import QatConfig
from compress.qat.loop import run_qat
from compress.quantization import quantize
from compress.quantization.config import QuantizeConfig
from compress.precision import cpu_bf16_flags
from evalsuite import hardware
from evalsuite.data import read_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LEN = 256


def ppl(model, ids: torch.Tensor) -> float:
    return perplexity(TorchRunner(model.eval()), ids, seq_len=SEQ_LEN, batch_size=8, progress=False).ppl


def finetune_table(args, tokenizer) -> list[str]:
    train = tokenize(read_text(DATA / "corpus" / "train" / args.author), tokenizer)
    held = tokenize(read_text(DATA / "corpus" / "heldout" / args.author), tokenizer)[: args.eval_tokens]
    base = dict(data={"builtin": "python-docs"}, heldout={"builtin": "python-docs"},  # texts given as ids below
                tokens=args.tokens, seq_len=SEQ_LEN, batch_size=4, warmup_steps=2, eval_every=10**6,
                eval_tokens=held.numel(), patience=None, guard={"end_tolerance": 10})
    arms = [("full fine-tuning", FinetuneConfig(**base, lr=args.ft_lr)),
            ("LoRA r=8 (all 4 projections), merged", FinetuneConfig(**base, lr=args.lora_lr, lora={"r": 8})),
            ("LoRA r=16 (all 4 projections), merged", FinetuneConfig(**base, lr=args.lora_lr, lora={"r": 16}))]
    rows = ["| arm | lr | trainable params | held-out ppl before | after | best step | tokens | train tok/s | wall s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, cfg in arms:
        t0 = time.perf_counter()
        _, r = run_finetune(load_model(TEACHER), train, cfg, held, progress=args.progress)
        wall = time.perf_counter() - t0
        rows.append(f"| {name} | {cfg.lr:g} | {r.trainable_params:,} | {r.before['ppl']:.2f} | {r.after['ppl']:.2f} | "
                    f"{r.best_step} | {r.tokens:,} | {r.tokens_per_s:,.0f} | {wall:.0f} |")
        print(rows[-1], flush=True)
    head = (f"Author: `{args.author}`: {train.numel():,} training tokens in corpus/train, {held.numel():,} held-out "
            f"tokens from corpus/heldout (the same book). The teacher was trained on all of corpus/train, this book "
            f"included. Budget {args.tokens:,} tokens per arm (batch 4 x {SEQ_LEN}), warm-up 2 steps, cosine; "
            "one held-out eval at the end; 'after' is the weights handed on (best step 0: training did not beat the "
            "weights it started from, which the loop then hands on unchanged).")
    return [head, "", *rows]


def qat_table(args, train_ids, held_ids, teacher, ppl_teacher) -> list[str]:
    rows = ["| method | PTQ ppl | QAT ppl | ppl / teacher (PTQ -> QAT) | gap recovered | QAT tokens | lr | "
            "codes moved | train tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in ("rtn", "gptq"):
        qcfg = QuantizeConfig(method=method, bits=4, group_size=128, calib_samples=args.calib_samples,
                              calib_seq_len=SEQ_LEN)
        ptq = quantize(copy.deepcopy(teacher), qcfg, train_ids)
        ppl_ptq = ppl(ptq, held_ids)
        cfg = QatConfig(tokens=args.tokens, seq_len=SEQ_LEN, batch_size=4, lr=args.qat_lr, warmup_steps=2,
                        eval_tokens=0, scales=args.qat_scales)
        model, r = run_qat(ptq, teacher, train_ids, cfg, progress=args.progress)
        ppl_qat = ppl(model, held_ids)
        gap = ppl_ptq - ppl_teacher
        rec = f"{(ppl_ptq - ppl_qat) / gap:.0%}" if gap > 0 else "-"
        rows.append(f"| {method} int4 g128 | {ppl_ptq:.2f} | {ppl_qat:.2f} | {ppl_ptq / ppl_teacher:.3f} -> "
                    f"{ppl_qat / ppl_teacher:.3f} | {rec} | {r.tokens:,} | {args.qat_lr:g} | "
                    f"{r.codes_changed / r.codes_total:.2%} | {r.tokens_per_s:,.0f} |")
        print(rows[-1], flush=True)
    variant = ("the outlier variant of the reference teacher (bench/quantize.py hard_teacher: x40 LayerNorm outliers "
               "in 4 residual channels of every block, the fp32 function unchanged), quantized and distilled from. "
               if args.outliers else "")
    head = (f"{variant}Teacher held-out ppl {ppl_teacher:.2f}. QAT: scales {args.qat_scales} (zero points frozen), latent fp32 weights "
            f"started at the PTQ codes, straight-through rounding, KL to the teacher (T=1) on corpus/train, batch 4 x "
            f"{SEQ_LEN}, no in-training eval (the codes after the last step are measured). GPTQ calibrated on "
            f"{args.calib_samples} windows of {SEQ_LEN} tokens.")
    return [head, "", *rows]


def bf16_table(args, train_ids, held_ids, teacher) -> list[str]:
    rows = ["| precision | held-out ppl after | train tok/s | wall s |", "|---|---:|---:|---:|"]
    init = StudentInit(layers=[0, 2, 3, 5])
    for amp in ("off", "bf16"):
        cfg = DistillConfig(tokens=args.tokens, seq_len=SEQ_LEN, batch_size=4, lr=5e-4, warmup_steps=2,
                            temperature=1.0, loss={"kl": 1.0}, eval_tokens=0, amp=amp)
        t0 = time.perf_counter()
        student, r = run_distillation(student_from_teacher(teacher, init), teacher, train_ids, cfg,
                                      progress=args.progress)
        wall = time.perf_counter() - t0
        rows.append(f"| {r.precision} ({r.precision_why}) | {ppl(student, held_ids):.2f} | {r.tokens_per_s:,.0f} | "
                    f"{wall:.0f} |")
        print(rows[-1], flush=True)
    head = (f"Distillation of a 4-block student (teacher blocks {init.layers}) for {args.tokens:,} tokens, KL at T=1, "
            f"lr 5e-4, batch 4 x {SEQ_LEN}; the same batches in both arms. CPU bf16 flags: "
            f"{', '.join(cpu_bf16_flags()) or 'none'}.")
    return [head, "", *rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32_768, help="training tokens per arm (default 32,768)")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens (default 16,384)")
    p.add_argument("--author", default="pg01342-pride-and-prejudice.txt", help="a file of corpus/train")
    p.add_argument("--ft-lr", type=float, default=5e-5)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--qat-lr", type=float, default=2e-5)
    p.add_argument("--qat-scales", choices=("learned", "frozen"), default="learned",
                   help="QAT scales (frozen: what 2026-12-07-training.md ran; bench/qat.py compares them)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--only", choices=("finetune", "qat", "bf16"), action="append", help="run these tables only")
    p.add_argument("--outliers", action="store_true", help="QAT table on the outlier variant of the teacher "
                   "(results file <date>-training-outliers.md)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    started = datetime.datetime.now()
    only = set(args.only or ("finetune", "qat", "bf16"))
    tokenizer = load_tokenizer(TEACHER)
    train_ids = tokenize(read_text(DATA / "corpus" / "train"), tokenizer)
    held_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tokenizer)[: args.eval_tokens]
    teacher = load_model(TEACHER)
    if args.outliers:
        from quantize import hard_teacher  # the sibling script (bench/ is on sys.path)

        teacher = hard_teacher(teacher)
    ppl_teacher = ppl(teacher, held_ids)
    out = [f"# bench/training.py {' '.join(sys.argv[1:])}".rstrip() + f", {started:%Y-%m-%d %H:%M}", "",
           f"Host: {hardware.host_cpu()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
           "**Timings were taken on a loaded machine** (2 cores shared with other engineers' test runs): "
           "compare tokens/s within this file only. Held-out ppl: corpus/heldout, "
           f"{held_ids.numel():,} tokens at {SEQ_LEN}-token windows, unless a table says otherwise.", ""]
    sections = [("finetune", "## Fine-tuning on one author's text", lambda: finetune_table(args, tokenizer)),
                ("qat", "## QAT vs PTQ, int4 g128",
                 lambda: qat_table(args, train_ids, held_ids, copy.deepcopy(teacher), ppl_teacher)),
                ("bf16", "## fp32 vs bf16 autocast, distillation at equal tokens",
                 lambda: bf16_table(args, train_ids, held_ids, teacher))]
    for key, title, run in sections:
        if key in only:
            print(title, flush=True)
            out += [title, "", *run(), ""]
    text = "\n".join(out)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started:%Y-%m-%d}-training{'-outliers' if args.outliers else ''}.md"
    path.write_text(text + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
