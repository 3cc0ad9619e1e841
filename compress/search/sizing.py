"""Exact weight bytes and projected decode speed of a (shape, quantize config), without a model.

Bytes are compress.quantization.footprint's: model.safetensors as the quantize step writes it
(per-module precision included; `ranks`: the factorized projections' ranks, each priced as its two
quantized factors). `matrix_bytes` prices one matrix alone, for the knapsack's
marginal costs (codes packed at `bits`, one fp32 scale per row and group; bits 16 = fp32).
"""

from __future__ import annotations

import math
from typing import Mapping

from compress.model_shape import Shape
from compress.quantization.config import QuantizeConfig
from compress.quantization.footprint import quantized_bytes
from compress.quantization.modules import BLOCK_LINEARS
from evalsuite import hardware

FLOAT_BYTES = 4  # fp32 everywhere a tensor is not quantized
HEAD = "lm_head"


def matrices(shape: Shape) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every quantizable matrix, by module name (h.<i>.<proj>, lm_head)."""
    E, I = shape.n_embd, shape.n_inner
    dims = {"attn.c_attn": (3 * E, E), "attn.c_proj": (E, E), "mlp.c_fc": (I, E), "mlp.c_proj": (E, I)}
    out = {f"h.{i}.{p}": dims[p] for i in range(shape.n_layer) for p in BLOCK_LINEARS}
    out[HEAD] = (int(shape.vocab_size or 0), E)
    return out


def matrix_bytes(out_f: int, in_f: int, bits: int, group: int | None) -> int:
    """Bytes of one matrix at `bits` (16: fp32) with one fp32 scale per (row, group)."""
    if bits >= 16:
        return out_f * in_f * FLOAT_BYTES
    groups = math.ceil(in_f / group) if group else 1
    return out_f * math.ceil(in_f * bits / 32) * 4 + out_f * groups * 4 + 16


Ranks = Mapping[str, int]  # {"h.<i>.<proj>": rank} of the factorized projections


def weight_bytes(shape: Shape, q: QuantizeConfig, ranks: Ranks | None = None) -> int:
    """model.safetensors bytes of the quantized model (compress.quantization.footprint)."""
    if shape.vocab_size is None:
        raise ValueError("the vocabulary size is needed to size the model")
    return quantized_bytes(q, shape.n_layer, shape.n_embd, shape.n_inner, int(shape.vocab_size), shape.n_positions,
                           shape.tied, ranks)


# The ONNX file beyond its weights: nodes, names and attributes, about 34.5 KB per block (model.onnx of a
# 6-block GPT-2 was 207,050 and 207,057 B larger than the quantized safetensors of the same model, in two
# per-module configurations; the safetensors header is counted in both). Per artifact kind of space.export.
GRAPH_BYTES_PER_BLOCK = {"onnx": 34_500, "none": 0}


def artifact_bytes(shape: Shape, q: QuantizeConfig, export: str, ranks: Ranks | None = None) -> int:
    """Bytes of the trial's last artifact: the quantized safetensors, plus the ONNX graph when exported."""
    return weight_bytes(shape, q, ranks) + GRAPH_BYTES_PER_BLOCK[export] * shape.n_layer


def read_bytes_per_token(shape: Shape, q: QuantizeConfig, ranks: Ranks | None = None) -> int:
    """Weight bytes one decode step reads: all of them but the looked-up tables (position embeddings,
    and the token table when it is a copy beside the head)."""
    gathered = shape.n_positions * shape.n_embd * FLOAT_BYTES
    if not shape.tied:
        gathered += int(shape.vocab_size or 0) * shape.n_embd * FLOAT_BYTES
    return weight_bytes(shape, q, ranks) - gathered


def projected_tokens_per_s(shape: Shape, q: QuantizeConfig, target: str, context: int,
                           ranks: Ranks | None = None) -> float:
    """Roofline decode tokens/s on `target` (evalsuite.hardware), batch 1."""
    t = hardware.target(target)
    kv = hardware.kv_bytes_per_token(shape.n_layer, shape.n_embd, context, 4 if target == hardware.HOST else 2)
    read = read_bytes_per_token(shape, q, ranks)
    return hardware.projected_decode_tokens_per_s(t.memory_bandwidth_gb_s, read, kv)
