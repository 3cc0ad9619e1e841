"""The quantized-model hand-off: the one definition of "a quantized linear layer" that torch evaluation
(compress.quantization.modules) and the ONNX exporter (MatMulNBits / QDQ) both read.

Integer codes are unsigned: q in [0, 2**bits), zeros in the same range (2**(bits-1) when symmetric).
The weight is in nn.Linear orientation [out, in] (HF GPT-2's Conv1D stores [in, out]; it is transposed
once, here). Input channels are split into contiguous groups of `group_size`; group g of row o is

    W[o, g*G:(g+1)*G] = (q[o, g*G:(g+1)*G].float() - zeros[o, g]) * scales[o, g]

and y = x @ W.T + bias, in fp32. For W8A8 (smoothquant) x is first fake-quantized per tensor:
x = clamp(round(x / input_scale), -128, 127) * input_scale (round half to even, as ONNX QuantizeLinear).

This module imports nothing of the package: storage, modules and the methods all import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class LinearCodes:
    name: str  # GPT-2 module path, e.g. "transformer.h.0.attn.c_attn", "lm_head"
    bits: int  # 4 or 8
    group_size: int  # input channels per scale; == in_features for per-channel
    q: torch.Tensor  # uint8 [out_features, in_features], integer codes in [0, 2**bits)
    scales: torch.Tensor  # float32 [out_features, in_features // group_size]
    zeros: torch.Tensor  # uint8 [out_features, in_features // group_size] (2**(bits-1) when symmetric)
    bias: torch.Tensor | None  # float32 [out_features]
    input_scale: float | None = None  # per-tensor activation scale for W8A8 (smoothquant), else None
    # Per-input-channel divisor of x (SmoothQuant). Always None as written by this package: the divisor
    # is folded into the preceding LayerNorm / value projection, so no extra op is needed in a graph.
    smooth: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.q.shape[1]

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in] that the codes stand for."""
        return dequantize(self.q, self.scales, self.zeros, self.group_size)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q - zero) * scale per contiguous group of input channels -> fp32 [out, in]."""
    out_f, in_f = q.shape
    qg = q.float().view(out_f, in_f // group_size, group_size)  # (out, n_groups, G)
    w = (qg - zeros.float().unsqueeze(-1)) * scales.unsqueeze(-1)
    return w.view(out_f, in_f)


def fake_quant_input(x: torch.Tensor, input_scale: float) -> torch.Tensor:
    """Per-tensor symmetric int8 quantize-dequantize of activations (what a QDQ pair computes)."""
    return torch.clamp(torch.round(x / input_scale), -128, 127) * input_scale


def read_quant_config(model_dir: Path) -> dict[str, Any] | None:
    """config.json's `quantization_config` (None for an fp32 model or a dir without config.json)."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("quantization_config")


def is_quantized_dir(model_dir: Path) -> bool:
    """True when config.json describes a quantization (any method this package writes)."""
    return read_quant_config(Path(model_dir)) is not None
