"""PyTorch dynamic int8 (torch.ao): int8 per-channel weights, activations quantized per tensor at run
time by fbgemm/onednn kernels on CPU.

torch.ao's quantize_dynamic ignores HF's Conv1D, so each projection's weight is quantized here (the
same symmetric per-channel int8 grid as rtn) and handed to torch.ao.nn.quantized.dynamic.Linear. The
codes and scales are saved like W8A8 (compressed-tensors int-quantized, dynamic activations), so a
saved model reloads to exactly the same int8 weights.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import GPT2LMHeadModel

from compress.quantization.handoff import LinearCodes
from compress.quantization.modules import block_linear_names, linear_weight, set_module
from compress.quantization.rtn import rtn

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig


def dynamic_linear(ql: LinearCodes) -> DynamicLinear:
    """A torch.ao dynamic int8 Linear holding exactly ql's codes (symmetric, per channel)."""
    signed = (ql.q.to(torch.int16) - 128).to(torch.int8)
    with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated; they still run here
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qweight = torch._make_per_channel_quantized_tensor(
            signed, ql.scales[:, 0].double(), torch.zeros(ql.out_features, dtype=torch.int64), 0)
    m = DynamicLinear(ql.in_features, ql.out_features, dtype=torch.qint8)
    m.set_weight_bias(qweight, ql.bias)
    return m


def install_dynamic(model: GPT2LMHeadModel, records: dict[str, LinearCodes]) -> GPT2LMHeadModel:
    for name, ql in records.items():
        set_module(model, name, dynamic_linear(ql))
    return model


def dynamic_records(model: GPT2LMHeadModel) -> dict[str, LinearCodes]:
    """int8 per-channel codes of every block projection (before the modules are swapped)."""
    out = {}
    for name in block_linear_names(model):
        w, bias = linear_weight(model.get_submodule(name))
        out[name] = rtn(name, w, bias, bits=8, group_size=None, sym=True)
    return out


def quantize_dynamic_int8(model: GPT2LMHeadModel) -> tuple[GPT2LMHeadModel, dict[str, LinearCodes]]:
    """Swap every projection for a dynamic int8 Linear (CPU only); also return the records to save."""
    records = dynamic_records(model)
    return install_dynamic(model.cpu(), records), records


def dynamic_records_of(model: GPT2LMHeadModel) -> dict[str, LinearCodes]:
    """The int8 codes and scales held by the model's dynamic Linear layers (for saving)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, DynamicLinear):
            w = m.weight()  # per-channel quantized tensor (out, in)
            scales = w.q_per_channel_scales().float().unsqueeze(1)  # (out, 1)
            q = (w.int_repr().to(torch.int16) + 128).to(torch.uint8)
            out[name] = LinearCodes(name, 8, w.shape[1], q, scales, torch.full_like(q[:, :1], 128),
                                        None if m.bias() is None else m.bias().detach().float())
    return out


@torch.no_grad()
def quantize_dynamic_smoothed(model: GPT2LMHeadModel, windows: torch.Tensor | None,
                              alpha: float | None) -> tuple[GPT2LMHeadModel, dict[str, LinearCodes]]:
    """Fold SmoothQuant factors (alpha; None: no smoothing) into the model, then torch dynamic int8
    (smooth_dynamic.py says why)."""
    from compress.quantization.smooth_dynamic import smooth_before_dynamic

    smooth_before_dynamic(model, windows, alpha)
    return quantize_dynamic_int8(model)


def run_dynamic_int8(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: torch.Tensor | None) -> GPT2LMHeadModel:
    return quantize_dynamic_smoothed(model, windows, cfg.smooth)[0]
