"""The integer grid (scales and zero points per group) and round-to-nearest quantization.

Symmetric: scale = max|w| / (2**(bits-1) - 1), zero = 2**(bits-1), so codes use [1, 2**bits - 1] and
+-max|w| are exact. Asymmetric: scale = (max - min) / (2**bits - 1), zero = round(-min / scale), with the
range widened to include 0 so that a zero weight stays exactly zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import GPT2LMHeadModel

from compress.quantization.handoff import LinearCodes
from compress.quantization.module_precision import FLOAT_BITS
from compress.quantization.modules import block_linear_names, install, linear_weight
from compress.quantization.registry import Grid

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig


def fit_grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of each row of w [rows, cols] -> (scales [rows], zeros [rows]) as float."""
    w = w.float()
    if sym:
        amax = w.abs().amax(dim=1)
        scales = amax / (2 ** (bits - 1) - 1)
        zeros = torch.full_like(scales, 2 ** (bits - 1))
    else:
        wmin = w.amin(dim=1).clamp(max=0)
        wmax = w.amax(dim=1).clamp(min=0)
        scales = (wmax - wmin) / (2 ** bits - 1)
        zeros = torch.round(-wmin / torch.where(scales > 0, scales, 1.0))
    scales = torch.where(scales > 0, scales, 1.0)  # an all-zero row: any scale is exact
    return scales, zeros


def to_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Round w [rows, cols] to the grid given per row (scales, zeros [rows] or [rows, 1])."""
    scales, zeros = scales.reshape(-1, 1), zeros.reshape(-1, 1)
    return torch.clamp(torch.round(w.float() / scales) + zeros, 0, 2 ** bits - 1)


def fit_groups(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid of every contiguous group of input channels of w [out, in] -> ([out, n_groups] x 2)."""
    out_f, in_f = w.shape
    rows = w.reshape(out_f * (in_f // group_size), group_size)  # one row per (output, group)
    scales, zeros = fit_grid(rows, bits, sym)
    return scales.view(out_f, -1), zeros.view(out_f, -1)


def rtn(name: str, w: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int | None,
        sym: bool) -> LinearCodes:
    """Round-to-nearest of w [out, in]; group_size None means one group per output row (per-channel)."""
    out_f, in_f = w.shape
    g = group_size or in_f
    scales, zeros = fit_groups(w, bits, g, sym)  # (out, n_groups)
    codes = to_codes(w.reshape(-1, g), scales.reshape(-1), zeros.reshape(-1), bits).view(out_f, in_f)
    return LinearCodes(name=name, bits=bits, group_size=g, q=codes.to(torch.uint8),
                           scales=scales.float().contiguous(), zeros=zeros.to(torch.uint8),
                           bias=None if bias is None else bias.detach().float().clone())


# -- the rtn method ----------------------------------------------------------------------------------

def rtn_head(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> dict[str, LinearCodes]:
    """The LM head's record when cfg.lm_head (or an override) asks for it (round-to-nearest), else {}."""
    bits, group = cfg.precision_of("lm_head")
    if bits == FLOAT_BITS:
        return {}
    w, _ = linear_weight(model.lm_head)
    return {"lm_head": rtn("lm_head", w, None, bits, group, cfg.sym)}


def quantize_rtn(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: None = None) -> GPT2LMHeadModel:
    """Round-to-nearest every block projection at its precision (and the head when asked), in place;
    modules kept float (bits 16) stay as they are."""
    records = {}
    for name in block_linear_names(model):
        bits, group = cfg.precision_of(name)
        if bits == FLOAT_BITS:
            continue
        w, bias = linear_weight(model.get_submodule(name))
        records[name] = rtn(name, w, bias, bits, group, cfg.sym)
    return install(model, records | rtn_head(model, cfg))
