"""Low-rank factorization vs weight sparsity on the reference teacher, at equal parameter count.

    python bench/families.py            # 49,152 held-out tokens, 64 x 256 calibration tokens
    python bench/families.py --quick    # 16,384 held-out tokens, 32 x 256 calibration tokens
    python bench/families.py --outliers 40   # the teacher with planted activation outliers (bench/outliers.py)
    python bench/families.py --quick --heal 32768 --int4 rtn --group 32   # + width pruning, a distillation
        heal of every row, int4 after both (bench/results/2026-12-07-families-heal.md)

Every row keeps half of the block projections' weights (c_attn, attn.c_proj, c_fc, mlp.c_proj; the
embeddings and LayerNorms untouched): low-rank with params 0.5 (plain SVD vs whitened SVD), 50%
unstructured and 2:4 sparsity (magnitude vs Wanda vs SparseGPT), each then int4 (--int4, default GPTQ g128;
the sparse rows keep their zeros, each low-rank factor is quantized with ranks in multiples of the group).
No healing (no distillation) in this
table unless --heal: then every row is also distilled from the (dense) teacher for the same number of
tokens (KL, T=1; a sparse row's zeros are kept by masking their gradients, so it stays at the same count)
and quantized again; and a width-pruning row (compress prune, MLP channels, same projection count) joins.
Perplexity is on corpus/heldout (256-token non-overlapping windows), calibration on
corpus/train; both are independent of the machine's load. The wall time of each row is printed too,
but it was taken on a shared, loaded machine: read it as an order of magnitude only.
Reads ../shared/data relative to the repository.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import time
from pathlib import Path

import torch

from compress.lowrank.api import factorize
from compress.lowrank.config import FactorizeConfig
from compress.distillation import DistillConfig, run_distillation
from compress.models import load_model, load_tokenizer
from compress.pruning import PruneConfig, prune
from compress.quantization import QuantizeConfig, quantize
from compress.sparsity.api import sparsify
from compress.sparsity.config import SparsifyConfig
from evalsuite import hardware
from evalsuite.data import read_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
HARD_CHANNELS = (17, 138, 245, 371)  # as bench/quantize.py and bench/outliers.py

ROWS = {
    "low-rank svd (params 0.5)": ("factorize", dict(method="svd", params=0.5)),
    "low-rank whiten (params 0.5)": ("factorize", dict(method="whiten", params=0.5)),
    "50% magnitude": ("sparsify", dict(method="magnitude", sparsity=0.5)),
    "50% wanda": ("sparsify", dict(method="wanda", sparsity=0.5)),
    "50% sparsegpt": ("sparsify", dict(method="sparsegpt", sparsity=0.5)),
    "2:4 magnitude": ("sparsify", dict(method="magnitude", pattern="2:4")),
    "2:4 wanda": ("sparsify", dict(method="wanda", pattern="2:4")),
    "2:4 sparsegpt": ("sparsify", dict(method="sparsegpt", pattern="2:4")),
}
# Width pruning at the same count: 3/4 of the MLP channels go (MLP 8E^2 -> 2E^2 weights, attention 4E^2 kept).
PRUNE_ROW = {"width prune (mlp 0.75, activation)": ("prune", dict(importance="activation", mlp=0.75))}


def _in_place(fn):
    def run(model, cfg, calib_ids):
        fn(model, cfg, calib_ids)
        return model
    return run


STEPS = {"factorize": (FactorizeConfig, _in_place(factorize)), "sparsify": (SparsifyConfig, _in_place(sparsify)),
         "prune": (PruneConfig, prune)}


def heal(model, teacher, train_ids, tokens: int):
    """A short distillation from the dense teacher (KL, T=1), keeping exact zeros at zero: their gradients are
    masked, so AdamW never moves them (its decoupled weight decay scales a zero to zero)."""
    model.requires_grad_(True)  # a copy of the teacher, which an earlier heal froze (run_distillation freezes it)
    hooks = []
    for block in model.transformer.h:
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            for p in block.get_submodule(name).parameters():
                if p.dim() == 2 and bool((p == 0).any()):
                    mask = (p != 0).to(p.dtype)
                    hooks.append(p.register_hook(lambda g, m=mask: g * m))
    cfg = DistillConfig(tokens=tokens, seq_len=256, batch_size=4, warmup_steps=4, eval_tokens=0, lr=1e-4,
                        temperature=1.0, loss={"kl": 1.0, "ce": 0.0}, checkpoint_every=10**6, seed=0)
    model, _ = run_distillation(model.train(), teacher, train_ids, cfg, progress=False)
    for h in hooks:
        h.remove()
    return model.eval()


def projection_nonzeros(model) -> int:
    """Non-zero weights of the block projections (a factorized one counts both factors)."""
    total = 0
    for block in model.transformer.h:
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            m = block.get_submodule(name)
            total += sum(int((p != 0).sum()) for n, p in m.named_parameters() if n != "bias")
    return total


def latency_lines(teacher, calib_ids, calib, rounds: int = 3) -> list[str]:
    """Torch decode ms/token (batch 1, prompt 128, 32 new tokens, 1 thread) of the dense teacher and of
    the whitened low-rank one (params 0.5), in alternating rounds, the fastest of each."""
    from evalsuite.latency import measure_latency

    low = copy.deepcopy(teacher)
    factorize(low, FactorizeConfig(method="whiten", params=0.5, **calib), calib_ids)
    best = {"dense": float("inf"), "low-rank whiten (params 0.5)": float("inf")}
    busy = []
    for _ in range(rounds):
        for name, model in (("dense", teacher), ("low-rank whiten (params 0.5)", low)):
            r = measure_latency(TorchRunner(model), prompt=128, new_tokens=32, repeats=3, warmup=1, threads=1,
                                progress=False)
            best[name] = min(best[name], r.decode_ms_per_token["p50"])
            busy.append(r.other_cores)
    dense = best["dense"]
    known = [b for b in busy if b is not None]
    load = f"other processes kept {min(known):.1f}-{max(known):.1f} cores busy meanwhile" if known else "load unknown"
    return [f"Latency ({load}):", "","| torch decode, batch 1, 1 thread | ms / token (fastest of alternating rounds) | / dense |",
            "|---|---:|---:|", *[f"| {k} | {v:.2f} | {v / dense:.2f} |" for k, v in best.items()]]


def roofline_lines(teacher, context: int = 192) -> list[str]:
    """Projected batch-1 decode tokens/s (memory roofline, evalsuite.hardware) on the Jetson Orin modules for
    the teacher dense and with half its projection weights, fp16 and int4 g128 projections, the rest fp16.
    2:4 in fp16 through TensorRT's sparse kernels: half the values plus 2-bit indices, 0.5625x the bytes;
    anywhere else (ONNX Runtime, CPU, or no sparse tactic) it reads the dense bytes."""
    proj = projection_nonzeros(teacher)
    rest = 2 * (teacher.num_parameters() - proj)  # tied embedding / head, positions, LayerNorms, biases: fp16
    int4 = 0.5 + 2 / 128  # codes + one fp16 scale per 128 weights
    rows = {"dense, fp16": 2 * proj, "dense, int4 g128": int4 * proj,
            "low-rank half (params 0.5), fp16": proj, "low-rank half, int4 g128": int4 * proj / 2,
            "2:4, fp16, TensorRT sparse kernels": 0.5625 * 2 * proj, "2:4, fp16, no sparse kernel (ORT, CPU)": 2 * proj}
    c = teacher.config
    kv = hardware.kv_bytes_per_token(c.n_layer, c.n_embd, context)
    devices = [hardware.target(n) for n in ("orin-nano", "orin-nx", "agx-orin")]
    lines = [f"Projected decode (batch 1, context {context}, fp16 KV; upper bounds, not measured):", "",
             "| weights | MB read / token | " + " | ".join(f"{d.description} ({d.memory_bandwidth_gb_s:g} GB/s)"
                                                          for d in devices) + " |",
             "|---|---:|" + "---:|" * len(devices)]
    for label, b in rows.items():
        total = int(b + rest)
        tps = [hardware.projected_decode_tokens_per_s(d.memory_bandwidth_gb_s, total, kv) for d in devices]
        lines.append(f"| {label} | {(total + kv) / 1e6:.1f} | " + " | ".join(f"{t:,.0f} tok/s" for t in tps) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16k eval tokens, 32 calibration windows")
    p.add_argument("--outliers", type=float, default=None, help="plant activation outliers of this factor first")
    p.add_argument("--rows", nargs="*", default=None, help="only these rows (names as in the table)")
    p.add_argument("--no-int4", action="store_true", help="skip the int4 column")
    p.add_argument("--int4", choices=("gptq", "rtn"), default="gptq", help="the int4 method (default gptq)")
    p.add_argument("--group", type=int, default=128, help="int4 group size (default 128); low-rank ranks are "
                                                          "chosen in multiples of it (rank_multiple)")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (default 49,152; --quick 16,384)")
    p.add_argument("--heal", type=int, default=0, help="also distil every row for this many tokens (and add the "
                                                       "width-pruning row)")
    p.add_argument("--latency", action="store_true", help="also time torch decode of dense vs whitened low-rank "
                                                          "(alternating rounds; noisy on a shared machine)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense row (rows split over several runs "
                                                           "with the same flags; ratios then read '-')")
    p.add_argument("--roofline", action="store_true", help="only print the projected decode table (no model runs)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # a shared machine; perplexity does not depend on it
    if args.roofline:
        print("\n".join(roofline_lines(load_model(TEACHER))))
        return 0
    eval_tokens = args.eval_tokens or (16_384 if args.quick else 49_152)
    windows = 32 if args.quick else 64
    tok = load_tokenizer(TEACHER)
    eval_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tok)
    calib_ids = tokenize(read_text(DATA / "corpus" / "train", max_chars=1_000_000), tok)
    teacher = load_model(TEACHER)
    if args.outliers:
        from evalsuite.outliers import plant_outliers

        teacher = plant_outliers(teacher, HARD_CHANNELS, args.outliers)
    calib = dict(calib_tokens=windows * 256, seq_len=256)
    qcfg = QuantizeConfig(method=args.int4, bits=4, group_size=args.group,
                          **(dict(calib_samples=windows, calib_seq_len=256) if args.int4 == "gptq" else {}))
    rows = {**(PRUNE_ROW if args.heal else {}), **ROWS}

    def ppl(model) -> float:
        return perplexity(TorchRunner(model), eval_ids, seq_len=256, max_tokens=eval_tokens, batch_size=8,
                          progress=False).ppl

    def int4(model) -> str:
        return "-" if args.no_int4 else f"{ppl(quantize(copy.deepcopy(model), qcfg, calib_ids)):.2f}"

    started = dt.datetime.now(dt.timezone.utc)
    dense_nz = projection_nonzeros(teacher)
    t0 = time.perf_counter()
    base = None if args.no_dense else ppl(teacher)
    lines = [] if args.no_dense else [f"| dense fp32 | {dense_nz / 1e6:.2f}M | {base:.2f} | 1.000 | {int4(teacher)} | "
                                      + ("- | - | - | " if args.heal else "") + f"{time.perf_counter() - t0:.0f} |"]
    print(*lines[-1:], flush=True)

    def ratio(x: float) -> str:
        return "-" if base is None else f"{x / base:.3f}"
    for label, (kind, kw) in rows.items():
        if args.rows and label not in args.rows:
            continue
        cfg_cls, fn = STEPS[kind]
        extra = dict(rank_multiple=args.group) if kind == "factorize" and not args.no_int4 else {}
        t0 = time.perf_counter()
        model = fn(copy.deepcopy(teacher), cfg_cls(**kw, **calib, **extra), calib_ids)
        nz = projection_nonzeros(model)
        value = ppl(model)
        cells = [f"{value:.2f}", ratio(value), int4(model)]
        if args.heal:
            model = heal(model, teacher, calib_ids, args.heal)
            assert projection_nonzeros(model) == nz, "the heal changed the count"
            healed = ppl(model)
            cells += [f"{healed:.2f}", ratio(healed), int4(model)]
        lines.append(f"| {label} | {nz / 1e6:.2f}M | {' | '.join(cells)} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    if args.latency:
        lines += ["", *latency_lines(teacher, calib_ids, calib)]
    flags = (f"{' --quick' if args.quick else ''}{f' --eval-tokens {args.eval_tokens}' if args.eval_tokens else ''}{f' --outliers {args.outliers:g}' if args.outliers else ''}"
             f"{f' --heal {args.heal}' if args.heal else ''}"
             f"{'' if args.no_int4 else f' --int4 {args.int4} --group {args.group}'}")
    int4_text = (f"int4: {args.int4} int4 g{args.group} after the row (sparse rows keep their zeros; low-rank ranks "
                 f"are multiples of {args.group} so that each factor quantizes in groups)")
    heal_text = (f"heal: {args.heal:,} tokens of corpus/train distilled from the dense teacher (KL, T=1, lr 1e-4, "
                 "4 x 256 tokens a step; a sparse row's zeros kept by masking their gradients)" if args.heal
                 else "no distillation heal")
    head = [f"# bench/families.py{flags}, {started:%Y-%m-%d %H:%M} UTC", "",
            f"Host: {hardware.host_cpu()}, 1 torch thread, torch {torch.__version__}. The machine was shared with "
            "other jobs (loaded): the wall times are an order of magnitude only; perplexities do not depend on it.",
            f"Model: {TEACHER.name}{f' with outliers x{args.outliers:g} in channels {list(HARD_CHANNELS)}' if args.outliers else ''}; "
            f"eval: first {eval_tokens:,} tokens of corpus/heldout, 256-token windows; calibration: "
            f"{windows} x 256 tokens of corpus/train. Every compressed row keeps half of the block projections' "
            f"weights (non-zeros counted in the second column, factors included); {heal_text}. {int4_text}.", "",
            "| row | projection non-zeros | ppl | ppl / dense | then int4 ppl | "
            + ("healed ppl | healed / dense | healed, then int4 ppl | " if args.heal else "") + "wall s (loaded) |",
            "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.heal else "") + "---:|"]
    text = "\n".join(head + lines)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("-heal" if args.heal else "") + ("-quick" if args.quick else "") + (
        f"-outliers{args.outliers:g}" if args.outliers else "")
    path = args.out / f"{started:%Y-%m-%d}-families{suffix}.md"
    path.write_text(text + "\n")
    print("\n" + text + f"\n\nwritten to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
