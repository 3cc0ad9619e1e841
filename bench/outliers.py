"""How large an activation outlier per-tensor int8 survives: the measurement behind OUTLIER_LIMIT.

    python bench/outliers.py            # factors 1 2 5 10 20 40, full held-out text
    python bench/outliers.py --quick    # the same factors on the first 20k held-out tokens

Plants outliers of each factor in 4 residual channels of every block of the reference teacher
(evalsuite.outliers.plant_outliers: the fp32 function is unchanged), measures the worst projection
input's max/median (the number the quantize step checks), and the perplexity of plain and smoothed
(smooth 0.5) torch dynamic int8 against the fp32 teacher, in one run.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from quantize import DATA, HARD_CHANNELS, TEACHER  # the sibling script (bench/ is on sys.path)
from compress.models import load_model, load_tokenizer
from compress.quantization import QuantizeConfig, quantize
from evalsuite.data import read_text, tokenize
from evalsuite.outliers import outlier_profile, plant_outliers
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

FACTORS = (1, 2, 5, 10, 20, 40)


def _ppl(model, ids, tokens) -> float:
    return perplexity(TorchRunner(model), ids, seq_len=256, max_tokens=tokens, batch_size=8, progress=False).ppl


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20k eval tokens, 16 calibration windows")
    p.add_argument("--factors", nargs="+", type=float, default=list(FACTORS))
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    tokens = 20_000 if args.quick else None
    calib = dict(calib_samples=16 if args.quick else 64, calib_seq_len=256)
    tok = load_tokenizer(TEACHER)
    eval_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tok)
    calib_ids = tokenize(read_text(DATA / "corpus" / "train", max_chars=1_000_000), tok)
    teacher = load_model(TEACHER)
    print(f"teacher {TEACHER.name}, outliers in channels {list(HARD_CHANNELS)} of every block; eval "
          f"{min(eval_ids.numel(), tokens or 10**12):,} held-out tokens, calibration {calib['calib_samples']} x 256")
    print(f"\n| {'factor':>6} | {'worst max/median':>16} | {'fp32 ppl':>8} | {'dynamic int8':>12} | "
          f"{'smooth 0.5':>10} |")
    print("|" + "|".join("-" * (w + 2) for w in (6, 16, 8, 12, 10)) + "|")
    for f in args.factors:
        hard = plant_outliers(copy.deepcopy(teacher), HARD_CHANNELS, f)
        worst = outlier_profile(hard, calib_ids, 256, calib["calib_samples"]).worst()
        base = _ppl(hard, eval_ids, tokens)
        ratios = []
        for extra in (dict(allow_outliers=True), dict(smooth=0.5)):
            q = quantize(copy.deepcopy(hard), QuantizeConfig(method="dynamic-int8", **calib, **extra), calib_ids)
            ratios.append(_ppl(q, eval_ids, tokens) / base)
        print(f"| {f:>6g} | {worst.ratio:>15.1f}x | {base:>8.2f} | {ratios[0]:>11.4f}x | {ratios[1]:>9.4f}x |",
              flush=True)
    print("\nppl columns: quantized / fp32 of the same (planted) model. worst: over the 4 projection inputs "
          "of every block and the LM head's input (evalsuite.outliers).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
