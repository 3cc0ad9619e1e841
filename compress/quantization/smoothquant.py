"""SmoothQuant (Xiao et al., 2022): W8A8 with per-channel int8 weights and per-tensor int8 activations.

Activation outlier channels make per-tensor int8 activations coarse. Dividing input channel j by
s_j = max|X_j|**alpha / max|W_j|**(1 - alpha) and multiplying the weight's column j by s_j leaves the
product unchanged but moves the difficulty from activations to weights. The division is folded into
what produces X (folding.py: ln_1, ln_2, the value outputs of c_attn), so the saved model is a stock
GPT-2 with different numbers. mlp.c_proj follows a GELU, where nothing can absorb a divisor; it is
quantized unsmoothed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import GPT2LMHeadModel

from compress.quantization.calibration import input_hooks, run_model
from compress.quantization.folding import fold_into_layernorm, fold_into_values
from compress.quantization.handoff import LinearCodes
from compress.quantization.modules import BLOCK_LINEARS, install, linear_weight
from compress.quantization.rtn import rtn

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

SMOOTHED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc")


def channel_absmax(model: GPT2LMHeadModel, windows: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """max |x| over calibration tokens, per input channel, of each named linear layer."""
    amax: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()  # (in,)
        amax[name] = torch.maximum(amax[name], m) if name in amax else m

    with input_hooks({n: model.get_submodule(n) for n in names}, observe):
        run_model(model, windows)
    return amax


def smoothing_factors(x_amax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|**alpha / max|W[:, j]|**(1-alpha) for w [out, in] (clamped away from 0)."""
    w_amax = w.abs().amax(dim=0).clamp(min=1e-5)
    s = x_amax.clamp(min=1e-5).pow(alpha) / w_amax.pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth(model: GPT2LMHeadModel, windows: torch.Tensor, alpha: float) -> None:
    """Fold the smoothing factors into the model, in place (its fp32 outputs do not change)."""
    names = [f"transformer.h.{i}.{n}" for i in range(model.config.n_layer) for n in SMOOTHED]
    amax = channel_absmax(model, windows, names)
    for i, block in enumerate(model.transformer.h):
        for ln, local in ((block.ln_1, "attn.c_attn"), (block.ln_2, "mlp.c_fc")):
            layer = block.get_submodule(local)
            s = smoothing_factors(amax[f"transformer.h.{i}.{local}"], linear_weight(layer)[0], alpha)
            fold_into_layernorm(ln, layer, s)
        c_attn, c_proj = block.attn.c_attn, block.attn.c_proj
        s = smoothing_factors(amax[f"transformer.h.{i}.attn.c_proj"], linear_weight(c_proj)[0], alpha)
        fold_into_values(c_attn, c_proj, s)


def tensor_absmax(model: GPT2LMHeadModel, windows: torch.Tensor, names: list[str]) -> dict[str, float]:
    """max |x| over every calibration activation of each named layer (per-tensor ranges)."""
    return {n: float(v.max()) for n, v in channel_absmax(model, windows, names).items()}


@torch.no_grad()
def quantize_smoothquant(model: GPT2LMHeadModel, windows: torch.Tensor, alpha: float,
                         head_bits: int | None = None, head_group: int | None = None) -> GPT2LMHeadModel:
    """Smooth, calibrate static activation scales, then int8 per-channel weights (in place)."""
    smooth(model, windows, alpha)
    names = [f"transformer.h.{i}.{n}" for i in range(model.config.n_layer) for n in BLOCK_LINEARS]
    ranges = tensor_absmax(model, windows, names)
    records: dict[str, LinearCodes] = {}
    for name in names:
        w, bias = linear_weight(model.get_submodule(name))
        r = rtn(name, w, bias, bits=8, group_size=None, sym=True)
        records[name] = LinearCodes(r.name, r.bits, r.group_size, r.q, r.scales, r.zeros, r.bias,
                                        input_scale=max(ranges[name], 1e-8) / 127)
    if head_bits:  # the LM head stays weight-only: its logits feed a softmax over the vocabulary
        w, _ = linear_weight(model.lm_head)
        records["lm_head"] = rtn("lm_head", w, None, head_bits, head_group, sym=True)
    return install(model, records)


# -- the smoothquant method --------------------------------------------------------------------------

def run_smoothquant(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: torch.Tensor) -> GPT2LMHeadModel:
    head_bits = cfg.head_bits
    return quantize_smoothquant(model, windows, cfg.alpha, head_bits, cfg.group_for(head_bits) if head_bits else None)
