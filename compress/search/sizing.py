"""Exact weight bytes and projected decode speed of a (shape, precision) without building the model.

A precision is a `Precision`: the default (bits, group) of the block projections, the head's, and
per-module bits (the quantize step's `overrides`). Bytes follow the quantized model directory as
compress/quantization/storage.py writes it: codes packed at `bits` per weight, one fp32 scale per
(output row, group), an int64[2] shape per matrix; every float tensor fp32; a quantized tied head
stored once (no separate token table). bits 16 means the matrix stays float (fp32 on disk).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from compress.model_shape import Shape
from compress.quantization.modules import BLOCK_LINEARS
from evalsuite import hardware

FLOAT_BYTES = 4  # fp32 everywhere a tensor is not quantized
HEAD = "lm_head"


@dataclass(frozen=True)
class Precision:
    """What a quantize step does to each matrix: bits (16 = float) and the group size of its scales."""

    bits: int = 4
    group: int | None = 128  # None: one scale per output row
    head_bits: int = 16
    overrides: tuple[tuple[str, int], ...] = field(default=())  # (module glob, bits), later wins

    def bits_of(self, module: str) -> int:
        bits = self.head_bits if module == HEAD else self.bits
        for pattern, b in self.overrides:
            if fnmatch.fnmatchcase(module, pattern):
                bits = b
        return bits

    def group_of(self, bits: int) -> int | None:
        """QuantizeConfig.group_for: an explicit group applies at every width; 8-bit without one is per-row."""
        return self.group


def matrices(shape: Shape) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every quantizable matrix, by module name (h.<i>.<proj>, lm_head)."""
    E, I = shape.n_embd, shape.n_inner
    dims = {"attn.c_attn": (3 * E, E), "attn.c_proj": (E, E), "mlp.c_fc": (I, E), "mlp.c_proj": (E, I)}
    out = {f"h.{i}.{p}": dims[p] for i in range(shape.n_layer) for p in BLOCK_LINEARS}
    out[HEAD] = (_vocab(shape), E)
    return out


def _vocab(shape: Shape) -> int:
    if shape.vocab_size is None:
        raise ValueError("the vocabulary size is needed to size the model")
    return int(shape.vocab_size)


def matrix_bytes(out_f: int, in_f: int, bits: int, group: int | None) -> int:
    """Bytes of one matrix at `bits` (16: fp32) with one fp32 scale per (row, group)."""
    if bits >= 16:
        return out_f * in_f * FLOAT_BYTES
    groups = math.ceil(in_f / group) if group else 1
    return out_f * math.ceil(in_f * bits / 32) * 4 + out_f * groups * 4 + 16


def float_bytes(shape: Shape) -> int:
    """The tensors that stay fp32: position table, LayerNorms, biases (the token table is counted with the head)."""
    E, I = shape.n_embd, shape.n_inner
    block = 2 * E + 3 * E + E + 2 * E + I + E  # ln_1, c_attn.bias, c_proj.bias, ln_2, c_fc.bias, mlp.c_proj.bias
    return (shape.n_positions * E + shape.n_layer * block + 2 * E) * FLOAT_BYTES


def weight_bytes(shape: Shape, p: Precision) -> int:
    """Bytes of the quantized model's weights on disk (see the module doc)."""
    total = float_bytes(shape)
    for name, (o, i) in matrices(shape).items():
        bits = p.bits_of(name)
        total += matrix_bytes(o, i, bits, p.group_of(bits))
    if not shape.tied:
        total += _vocab(shape) * shape.n_embd * FLOAT_BYTES  # a separate float token table
    return total


def read_bytes_per_token(shape: Shape, p: Precision) -> int:
    """Weight bytes one decode step reads: all of them but the looked-up tables (position embeddings,
    and the token table when it is a copy beside the head)."""
    gathered = shape.n_positions * shape.n_embd * FLOAT_BYTES
    if not shape.tied:
        gathered += _vocab(shape) * shape.n_embd * FLOAT_BYTES
    return weight_bytes(shape, p) - gathered


def projected_tokens_per_s(shape: Shape, p: Precision, target: str, context: int) -> float:
    """Roofline decode tokens/s on `target` (evalsuite.hardware), batch 1."""
    t = hardware.target(target)
    kv = hardware.kv_bytes_per_token(shape.n_layer, shape.n_embd, context, 4 if target == hardware.HOST else 2)
    return hardware.projected_decode_tokens_per_s(t.memory_bandwidth_gb_s, read_bytes_per_token(shape, p), kv)
