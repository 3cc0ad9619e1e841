"""Exact bytes of a quantized checkpoint from its shape and QuantizeConfig, without a model.

`checkpoint_tensors` lists the tensors compress.quantization.storage writes (name, safetensors dtype,
shape), module by module at cfg.precision_of(name), a factorized projection (compress.lowrank; `ranks`)
as its two quantized factors `<layer>.down` [r, in] and `<layer>.up` [out, r] (+ the bias);
`quantized_bytes` adds the safetensors header as the safetensors library lays it out (tensors sorted by
dtype then name, compact JSON padded to 8 bytes), so the result is model.safetensors' size on disk
(tests compare the two). The search prices a per-module assignment, or a factorized model by the ranks
its factorize step chose, with it before running anything.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Mapping

from compress.quantization.config import layer_widths
from compress.quantization.module_precision import FLOAT_BITS, HEAD, module_names
from compress.quantization.registry import Layout

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

DTYPE_BYTES = {"I8": 1, "I32": 4, "F32": 4, "I64": 8}
# safetensors' Dtype enum order among the dtypes written here (its header lists tensors by dtype, descending)
DTYPE_RANK = {"I8": 0, "I32": 1, "F32": 2, "I64": 3}
Tensor = tuple[str, str, tuple[int, ...]]  # (name, dtype, shape)


def _quantized_layer(name: str, out_f: int, in_f: int, bits: int, group: int | None, as_int8: bool,
                     sym: bool, bias: bool, input_scale: bool) -> list[Tensor]:
    """storage.layer_tensors of one layer."""
    groups = in_f // group if group else 1
    out = [(f"{name}.weight_scale", "F32", (out_f, groups))]
    if as_int8:
        out.append((f"{name}.weight", "I8", (out_f, in_f)))
    else:
        out += [(f"{name}.weight_packed", "I32", (out_f, -(-in_f * bits // 32))), (f"{name}.weight_shape", "I64", (2,))]
    if not sym:  # asymmetric grids are stored as int8 (storage.stores_int8)
        out.append((f"{name}.weight_zero_point", "I8", (out_f, groups)))
    if input_scale:
        out.append((f"{name}.input_scale", "F32", (1,)))
    if bias:
        out.append((f"{name}.bias", "F32", (out_f,)))
    return out


def checkpoint_tensors(cfg: QuantizeConfig, n_layer: int, n_embd: int, n_inner: int | None, vocab_size: int,
                       n_positions: int, tied: bool = True, ranks: Mapping[str, int] | None = None) -> list[Tensor]:
    """The tensors of the quantized checkpoint of a GPT-2 of this shape (weight-only and W8A8 layouts).
    ranks: {"h.<i>.<proj>": rank} of the projections a factorize step made low-rank (None: none)."""
    layout = cfg.quant_method.layout
    if not layout.has_handoff:
        raise ValueError(f"method {cfg.method} is stored by {layout.value}; its bytes are not modelled here")
    ranks = ranks or {}
    if ranks and not cfg.quant_method.quantizes_factors:
        raise ValueError(f"method {cfg.method} does not quantize low-rank factors")
    inner = n_inner or 4 * n_embd
    widths = layer_widths(n_embd, inner)
    outs = {"attn.c_attn": 3 * n_embd, "attn.c_proj": n_embd, "mlp.c_fc": inner, "mlp.c_proj": n_embd}
    w8a8 = layout is Layout.INT8
    out: list[Tensor] = [("transformer.wpe.weight", "F32", (n_positions, n_embd)),
                         ("transformer.ln_f.weight", "F32", (n_embd,)), ("transformer.ln_f.bias", "F32", (n_embd,))]
    for name in module_names(n_layer):
        bits, group = cfg.precision_of(name)
        local = name if name == HEAD else name.split(".", 2)[2]
        full = name if name == HEAD else f"transformer.{name}"
        out_f, in_f = (vocab_size, n_embd) if name == HEAD else (outs[local], widths[local])
        if name in ranks:  # two factors at the step's precision (overrides are refused after factorize)
            r, kw = ranks[name], {"as_int8": w8a8 or not cfg.sym, "sym": cfg.sym, "input_scale": w8a8}
            out += _quantized_layer(f"{full}.down", r, in_f, bits, group, bias=False, **kw)
            out += _quantized_layer(f"{full}.up", out_f, r, bits, group, bias=True, **kw)
        elif bits != FLOAT_BITS:
            out += _quantized_layer(full, out_f, in_f, bits, group, as_int8=(w8a8 and name != HEAD) or not cfg.sym,
                                    sym=cfg.sym, bias=name != HEAD, input_scale=w8a8 and name != HEAD)
        elif name != HEAD:  # kept float: stored as an fp32 nn.Linear
            out += [(f"{full}.weight", "F32", (out_f, in_f)), (f"{full}.bias", "F32", (out_f,))]
        elif not tied:
            out.append(("lm_head.weight", "F32", (vocab_size, n_embd)))
    for i in range(n_layer):
        for ln in ("ln_1", "ln_2"):
            out += [(f"transformer.h.{i}.{ln}.{p}", "F32", (n_embd,)) for p in ("weight", "bias")]
    # the token table: stored, unless a quantized tied head's codes stand for it (storage.table_is_the_head)
    if not (tied and cfg.precision_of(HEAD)[0] != FLOAT_BITS):
        out.append(("transformer.wte.weight", "F32", (vocab_size, n_embd)))
    return out


def _nbytes(t: Tensor) -> int:
    n = DTYPE_BYTES[t[1]]
    for d in t[2]:
        n *= d
    return n


def quantized_bytes(cfg: QuantizeConfig, n_layer: int, n_embd: int, n_inner: int | None, vocab_size: int,
                    n_positions: int, tied: bool = True, ranks: Mapping[str, int] | None = None) -> int:
    """Bytes of model.safetensors that the quantize step writes for a GPT-2 of this shape (header included);
    ranks: as checkpoint_tensors'."""
    tensors = sorted(checkpoint_tensors(cfg, n_layer, n_embd, n_inner, vocab_size, n_positions, tied, ranks),
                     key=lambda t: (-DTYPE_RANK[t[1]], t[0]))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        n = _nbytes(t)
        header[t[0]] = {"dtype": t[1], "shape": list(t[2]), "data_offsets": [offset, offset + n]}
        offset += n
    head = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + head + (-head % 8) + offset
