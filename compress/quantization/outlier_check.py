"""The activation-outlier check of the quantize step and of the export step's ORT dynamic int8.

A method that gives a projection's input ONE int8 scale per tensor (torch dynamic int8, ONNX
Runtime's quantize_dynamic) rounds every channel to steps of max|x| / 127. When a few channels are
R times the median (real GPT-2's LayerNorm outputs: tens to hundreds), the median channel keeps only
about 127 / R levels and the model breaks (1.30x perplexity on the reference teacher with outliers
x40, where our fp32 tables said 1.0007x). So the calibration pass measures every projection input
(evalsuite.outliers.outlier_profile), records the profile in step.json, and refuses the run when an
input quantized per tensor WITHOUT a smoothing divisor in front has max/median above OUTLIER_LIMIT,
unless the plan says `allow_outliers: true`.

Which inputs count: all four projections for plain per-tensor int8; with SmoothQuant-style smoothing
(`smooth: alpha`, method smoothquant) the inputs of attn.c_attn, attn.c_proj and mlp.c_fc are divided
by the smoothing factors, so only mlp.c_proj (after the GELU, where nothing can absorb a divisor)
counts.

OUTLIER_LIMIT: bench/outliers.py plants outliers of growing size (4 channels in every block) in the
reference teacher and measures plain dynamic int8. See docs/quantization.md for the measured table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.errors import UserError
from compress.gate import Refusal
from compress.quantization.options import needs_outlier_windows, smooths_activations
from evalsuite.outliers import PROJECTIONS, OutlierProfile, outlier_profile

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

# max/median of an input's per-channel max |x| above which plain per-tensor int8 is refused.
# Measured (bench/outliers.py --quick, docs/quantization.md): the reference teacher's worst input is
# 4.8x; plain dynamic int8 loses 0.41% of perplexity at a worst ratio of 7.2x and 1.68% at 14.4x
# (the loss grows about as the ratio squared, so 1% near 11x). 10x refuses before a 1% loss and
# leaves the unmodified teacher 2x of margin.
OUTLIER_LIMIT = 10.0
SUGGESTION = ("smooth first (`smooth: 0.5`), or use method smoothquant, bnb-int8 or a weight-only method "
              "(rtn / gptq)")
EXPORT_SUGGESTION = ("smooth first (`smooth: 0.5`), or quantize before the export with method smoothquant or a "
                     "weight-only method (rtn / gptq)")


def per_tensor_inputs(smoothed: bool) -> tuple[str, ...]:
    """Projection inputs quantized per tensor with no smoothing divisor in front of them."""
    return ("mlp.c_proj",) if smoothed else PROJECTIONS


def profile_record(profile: OutlierProfile, checked: tuple[str, ...], allowed: bool) -> dict:
    """What step.json (and the saved config) keeps: every input's max/median, the worst inputs'
    top channels, and what was checked against which limit."""
    ranked = sorted(profile.layers.values(), key=lambda p: -p.ratio)
    return {"worst": profile.worst().describe(), "limit": OUTLIER_LIMIT, "checked": list(checked),
            "worst_checked": profile.worst(checked).describe() if checked else None, "allow_outliers": allowed,
            "tokens": profile.tokens,
            "max_over_median": {p.layer: round(p.ratio, 2) for p in profile.layers.values()},
            "top_channels": {p.layer: [[c, round(r, 1)] for c, r in p.top(4)] for p in ranked[:4]}}


class OutlierRefusal(Refusal):
    """A per-tensor int8 method refused on a measured outlier; `at(where)` names the plan key path."""

    def __init__(self, method: str, worst: str, where: str = "quantize"):
        self.method, self.worst = method, worst
        super().__init__(where, f"{method} quantizes activations per tensor and calibration finds {worst} "
                                f"(limit {OUTLIER_LIMIT:.0f}x: a large perplexity loss is expected)",
                         how=f"{EXPORT_SUGGESTION if where.endswith('export') else SUGGESTION}; "
                             f"or set {where}.allow_outliers: true")

    def at(self, where: str) -> "OutlierRefusal":
        return OutlierRefusal(self.method, self.worst, where)


def check_profile(profile: OutlierProfile, checked: tuple[str, ...], what: str, allowed: bool,
                  where: str = "quantize") -> dict:
    """Refuse (OutlierRefusal) when a checked input's max/median exceeds OUTLIER_LIMIT and outliers
    are not allowed; otherwise return the profile's record (for step.json)."""
    if checked and not allowed:
        worst = profile.worst(checked)
        if worst.ratio > OUTLIER_LIMIT:
            raise OutlierRefusal(what, worst.describe(), where)
    return profile_record(profile, checked, allowed)


@torch.no_grad()
def check_outliers(model: nn.Module, windows: torch.Tensor, checked: tuple[str, ...], what: str,
                   allowed: bool, where: str = "quantize") -> dict:
    """Profile `model` (before any smoothing is folded in) on calibration windows (N, T) and check it."""
    profile = outlier_profile(model, windows, seq_len=windows.shape[-1], max_windows=None)
    return check_profile(profile, checked, what, allowed, where)


# -- the quantize step's methods -----------------------------------------------------------------------

def checked_inputs(cfg: "QuantizeConfig") -> tuple[str, ...]:
    """The inputs a QuantizeConfig's method quantizes per tensor unsmoothed (weight-only and LLM.int8
    methods: none; their profile is recorded, not checked)."""
    m = cfg.quant_method
    if not m.int8_activations:
        return ()
    # ONNX Runtime's graph quantizers also quantize the LM head's MatMul per tensor; its input (ln_f's
    # output) cannot be smoothed without changing the tied token embeddings.
    return per_tensor_inputs(smooths_activations(cfg)) + (("lm_head",) if m.onnx is not None and m.onnx.in_graph else ())


def calibrates_for_outliers(cfg: "QuantizeConfig", calib: torch.Tensor | None) -> bool:
    """Whether a method not calibrated by itself (dynamic-int8) draws calibration windows: to smooth, to
    check outliers, or (given ids and allow_outliers) only to record the profile."""
    m = cfg.quant_method
    if m.calibrates or not m.int8_activations:
        return False
    if calib is None and needs_outlier_windows(cfg):
        what = "smooth" if smooths_activations(cfg) else "its activation-outlier check"
        raise UserError(f"quantize: {cfg.method} needs calibration token ids (calib=...) for {what}"
                        + ("" if smooths_activations(cfg) else "; or set allow_outliers=True"))
    return calib is not None


def record_outliers(model: nn.Module, cfg: "QuantizeConfig", windows: torch.Tensor) -> dict:
    """Profile the fp32 model on the calibration windows; refuse a per-tensor method on outliers."""
    what = f"method {cfg.method}" + (f" (smooth {cfg.smooth})" if getattr(cfg, "smooth", None) is not None else "")
    return check_outliers(model, windows, checked_inputs(cfg), what, cfg.allow_outliers)
