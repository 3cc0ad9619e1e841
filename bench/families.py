"""Low-rank factorization vs weight sparsity on the reference teacher, at equal parameter count.

    python bench/families.py            # 49,152 held-out tokens, 64 x 256 calibration tokens
    python bench/families.py --quick    # 16,384 held-out tokens, 32 x 256 calibration tokens
    python bench/families.py --outliers 40   # the teacher with planted activation outliers (bench/outliers.py)

Every row keeps half of the block projections' weights (c_attn, attn.c_proj, c_fc, mlp.c_proj; the
embeddings and LayerNorms untouched): low-rank with params 0.5 (plain SVD vs whitened SVD), 50%
unstructured and 2:4 sparsity (magnitude vs Wanda vs SparseGPT), each then GPTQ int4 g128 (the sparse
rows keep their zeros; low-rank rows cannot be quantized yet). No healing (no distillation) in this
table. Perplexity is on corpus/heldout (256-token non-overlapping windows), calibration on
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
from compress.models import load_model, load_tokenizer
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
STEPS = {"factorize": (FactorizeConfig, factorize), "sparsify": (SparsifyConfig, sparsify)}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16k eval tokens, 32 calibration windows")
    p.add_argument("--outliers", type=float, default=None, help="plant activation outliers of this factor first")
    p.add_argument("--rows", nargs="*", default=None, help="only these rows (names as in the table)")
    p.add_argument("--no-int4", action="store_true", help="skip the GPTQ int4 column")
    p.add_argument("--latency", action="store_true", help="also time torch decode of dense vs whitened low-rank "
                                                          "(alternating rounds; noisy on a shared machine)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # a shared machine; perplexity does not depend on it
    eval_tokens = 16_384 if args.quick else 49_152
    windows = 32 if args.quick else 64
    tok = load_tokenizer(TEACHER)
    eval_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tok)
    calib_ids = tokenize(read_text(DATA / "corpus" / "train", max_chars=1_000_000), tok)
    teacher = load_model(TEACHER)
    if args.outliers:
        from evalsuite.outliers import plant_outliers

        teacher = plant_outliers(teacher, HARD_CHANNELS, args.outliers)
    calib = dict(calib_tokens=windows * 256, seq_len=256)
    qcfg = QuantizeConfig(method="gptq", bits=4, group_size=128, calib_samples=windows, calib_seq_len=256)

    def ppl(model) -> float:
        return perplexity(TorchRunner(model), eval_ids, seq_len=256, max_tokens=eval_tokens, batch_size=8,
                          progress=False).ppl

    started = dt.datetime.now(dt.timezone.utc)
    dense_nz = projection_nonzeros(teacher)
    t0 = time.perf_counter()
    base = ppl(teacher)
    lines = [f"| dense fp32 | {dense_nz / 1e6:.2f}M | {base:.2f} | 1.000 | "
             f"{'-' if args.no_int4 else f'{ppl(quantize(copy.deepcopy(teacher), qcfg, calib_ids)):.2f}'} | "
             f"{time.perf_counter() - t0:.0f} |"]
    print(lines[-1], flush=True)
    for label, (kind, kw) in ROWS.items():
        if args.rows and label not in args.rows:
            continue
        cfg_cls, fn = STEPS[kind]
        t0 = time.perf_counter()
        model = copy.deepcopy(teacher)
        fn(model, cfg_cls(**kw, **calib), calib_ids)
        nz = projection_nonzeros(model)
        value = ppl(model)
        int4 = "-" if args.no_int4 or kind == "factorize" else f"{ppl(quantize(model, qcfg, calib_ids)):.2f}"
        lines.append(f"| {label} | {nz / 1e6:.2f}M | {value:.2f} | {value / base:.3f} | {int4} | "
                     f"{time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    if args.latency:
        lines += ["", *latency_lines(teacher, calib_ids, calib)]
    head = [f"# bench/families.py{' --quick' if args.quick else ''}"
            f"{f' --outliers {args.outliers:g}' if args.outliers else ''}, {started:%Y-%m-%d %H:%M} UTC", "",
            f"Host: {hardware.host_cpu()}, 1 torch thread, torch {torch.__version__}. The machine was shared with "
            "other jobs (loaded): the wall times are an order of magnitude only; perplexities do not depend on it.",
            f"Model: {TEACHER.name}{f' with outliers x{args.outliers:g} in channels {list(HARD_CHANNELS)}' if args.outliers else ''}; "
            f"eval: first {eval_tokens:,} tokens of corpus/heldout, 256-token windows; calibration: "
            f"{windows} x 256 tokens of corpus/train. Every compressed row keeps half of the block projections' "
            "weights (non-zeros counted in the second column, factors included); no distillation heal. "
            "int4: GPTQ int4 g128 after the row (sparse rows keep their zeros; low-rank factors are not quantized "
            "yet).", "",
            "| row | projection non-zeros | ppl | ppl / dense | then gptq int4 ppl | wall s (loaded) |",
            "|---|---:|---:|---:|---:|---:|"]
    text = "\n".join(head + lines)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + (f"-outliers{args.outliers:g}" if args.outliers else "")
    path = args.out / f"{started:%Y-%m-%d}-families{suffix}.md"
    path.write_text(text + "\n")
    print("\n" + text + f"\n\nwritten to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
