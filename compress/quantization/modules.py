"""The quantized linear module used for torch evaluation, and finding GPT-2's linear layers.

QuantLinear keeps the integer codes (uint8, one per weight: 4x smaller than fp32 in memory) and
dequantizes on every forward, then does an fp32 matmul: exactly the numerics of the hand-off
(handoff.py) that the ONNX exporter writes, so torch and ONNX Runtime perplexities agree.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from compress.quantization.handoff import LinearCodes, dequantize, fake_quant_input
from compress.quantization.module_precision import BLOCK_LINEARS

class QuantLinear(nn.Module):
    """y = x @ dequant(q).T + bias, x fake-quantized to int8 first when input_scale is set (W8A8)."""

    def __init__(self, ql: LinearCodes):
        super().__init__()
        self.name, self.bits, self.group_size = ql.name, ql.bits, ql.group_size
        self.in_features, self.out_features = ql.in_features, ql.out_features
        self.input_scale = ql.input_scale
        self.register_buffer("q", ql.q.to(torch.uint8).contiguous())
        self.register_buffer("scales", ql.scales.float().contiguous())
        self.register_buffer("zeros", ql.zeros.to(torch.uint8).contiguous())
        self.register_buffer("bias", None if ql.bias is None else ql.bias.float().contiguous())

    def record(self) -> LinearCodes:
        """This layer as a hand-off record (tensors on CPU)."""
        return LinearCodes(self.name, self.bits, self.group_size, self.q.cpu(), self.scales.cpu(),
                               self.zeros.cpu(), None if self.bias is None else self.bias.cpu(),
                               self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.q, self.scales, self.zeros, self.group_size)  # (out, in) fp32
        if self.input_scale is not None:
            x = fake_quant_input(x, self.input_scale)
        return nn.functional.linear(x, w.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        kind = "W8A8" if self.input_scale is not None else f"int{self.bits} weight-only"
        return f"{self.in_features}->{self.out_features}, {kind}, group_size={self.group_size}"


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias) of a Conv1D (stored [in, out]) or nn.Linear, as fp32 copies."""
    if isinstance(module, Conv1D):
        w = module.weight.detach().t()
    elif isinstance(module, nn.Linear):
        w = module.weight.detach()
    else:
        raise TypeError(f"{type(module).__name__} is not a linear layer")
    bias = None if module.bias is None else module.bias.detach().float().clone()
    return w.float().clone(), bias


def block_linear_names(model: GPT2LMHeadModel) -> list[str]:
    """Module paths of every attention and MLP projection, block by block (each factor of a factorized
    projection on its own: block_projections)."""
    return [f"transformer.h.{i}.{n}" for i, block in enumerate(model.transformer.h) for n in block_projections(block)]


def block_projections(block: nn.Module) -> list[str]:
    """The linear layers of one block, relative to it: BLOCK_LINEARS, where the factorize step made a
    projection two factors (compress.lowrank.modules.LowRankPair) its `down` and `up` instead."""
    from compress.lowrank.modules import FACTORS, LowRankPair

    names = []
    for n in BLOCK_LINEARS:
        names += [f"{n}.{f}" for f in FACTORS] if isinstance(block.get_submodule(n), LowRankPair) else [n]
    return names


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_tied_table(model: GPT2LMHeadModel, head: LinearCodes) -> None:
    """Quantizing a tied head quantizes the tied matrix: the token lookup reads the head's dequantized
    codes, as the head multiplies by them (llama.cpp's token_embd does the same). The model is untied
    in form (the head becomes a QuantLinear) but not in values, so the ONNX export (export.tied_embedding)
    and the torch checkpoint (storage.table_is_the_head) store the matrix once, as the codes. An untied
    head is quantized alone."""
    wte = model.transformer.wte.weight
    if model.lm_head.weight is wte:
        with torch.no_grad():
            wte.copy_(head.dequantize().to(wte.device, wte.dtype))  # (V, E), the head's own layout
    model.config.tie_word_embeddings = False


def install(model: GPT2LMHeadModel, records: dict[str, LinearCodes]) -> GPT2LMHeadModel:
    """Replace each named linear by a QuantLinear built from its record (in place)."""
    tied = "lm_head" in records and model.lm_head.weight is model.transformer.wte.weight
    if "lm_head" in records:
        quantize_tied_table(model, records["lm_head"])
    device = model.transformer.wte.weight.device
    for name, ql in records.items():
        set_module(model, name, QuantLinear(ql).to(device))
    if tied:  # the table is the head's codes: a decode step reads it once, as the head (roofline bytes)
        model.lm_head.serves_token_table = True
    return model


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
