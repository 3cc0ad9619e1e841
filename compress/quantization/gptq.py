"""GPTQ (Frantar et al., 2022): quantize one column at a time and spread each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian H = X^T X of the layer's inputs.

The model is processed block by block: the Hessians of block i come from its inputs as computed by the
already-quantized blocks 0..i-1, then block i is quantized and its (quantized) outputs become block
i+1's inputs, so only one block's activations are held at a time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.calibration import capture_block_inputs, input_hooks, run_block
from compress.quantization.handoff import LinearCodes
from compress.quantization.module_precision import FLOAT_BITS
from compress.quantization.modules import block_projections, install, linear_weight
from compress.quantization.rtn import fit_groups, fit_grid, to_codes
from compress.sparsity.pattern import CONFIG_KEY, sparsity_record

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

log = logging.getLogger(__name__)

BLOCK_SIZE = 128  # columns updated together (lazy batch updates); a multiple of every group size


def drop_dead_inputs(W: torch.Tensor, H: torch.Tensor) -> None:
    """Inputs that are always zero: their weights do not matter (set to 0), their Hessian row is made
    invertible (in place on both; shared with SparseGPT, compress/sparsity/sparsegpt.py)."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0


def inverse_hessian_factor(H: torch.Tensor, damp: float, name: str, method: str = "gptq") -> torch.Tensor:
    """The upper Cholesky factor of (H + damp * mean(diag H) * I)^-1: the rows OBS-style updates read
    (GPTQ's rounding errors, SparseGPT's pruning errors)."""
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise UserError(f"{method}: the Hessian of {name} is not positive definite; raise damp "
                        f"(now {damp}) or the calibration tokens") from None


@torch.no_grad()
def gptq(name: str, w: torch.Tensor, bias: torch.Tensor | None, H: torch.Tensor, bits: int,
         group_size: int | None, sym: bool, damp: float, act_order: bool,
         keep: torch.Tensor | None = None) -> LinearCodes:
    """Quantize w [out, in] given the Hessian H [in, in] of its inputs. `keep` (bool [out, in]): weights
    outside it are pruned (compress/sparsity) and stay exactly zero: each column is masked before it is
    rounded, and the error of the pruned weights' drift is spread like a rounding error."""
    W = w.clone().float()
    out_f, in_f = W.shape
    g = group_size or in_f
    H = H.clone().float()
    drop_dead_inputs(W, H)

    # Grids fitted up front from the original weights when columns are visited out of order (act-order
    # keeps groups contiguous: "static groups") or per channel; otherwise at each group's first column.
    static = act_order or g == in_f
    if static:
        scales, zeros = fit_groups(W, bits, g, sym)  # (out, n_groups)
    else:
        scales, zeros = torch.zeros(out_f, in_f // g), torch.zeros(out_f, in_f // g)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = inverse_hessian_factor(H, damp, name)
    mask = None if keep is None else keep[:, perm].float()  # 1: a weight, 0: pruned (stays zero)

    codes = torch.empty(out_f, in_f)
    for i1 in range(0, in_f, BLOCK_SIZE):
        i2 = min(i1 + BLOCK_SIZE, in_f)
        W1 = W[:, i1:i2].clone()  # (out, cols) updated in place as errors arrive
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])  # the column's index in the original order
            grp = col // g
            if not static and col % g == 0:
                group = W1[:, i:i + g] if mask is None else W1[:, i:i + g] * mask[:, i1 + i:i1 + i + g]
                s, z = fit_grid(group, bits, sym)
                scales[:, grp], zeros[:, grp] = s, z
            s, z = scales[:, grp], zeros[:, grp]
            wcol = W1[:, i:i + 1] if mask is None else W1[:, i:i + 1] * mask[:, i1 + i:i1 + i + 1]
            q = to_codes(wcol, s, z, bits)[:, 0]  # (out,); a pruned weight's code is its zero point
            codes[:, col] = q
            err = (W1[:, i] - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's errors, onto the later columns

    return LinearCodes(name=name, bits=bits, group_size=g, q=codes.to(torch.uint8),
                           scales=scales.float().contiguous(), zeros=zeros.to(torch.uint8), bias=bias)


class HessianSum:
    """Running H = mean of x x^T over every token seen (x: a linear layer's input rows)."""

    def __init__(self):
        self.H: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        if name not in self.H:  # float64 running sum, so many batches add up exactly
            self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.n[name] = 0
        self.H[name] += (x.T @ x).double()
        self.n[name] += x.shape[0]

    def get(self, name: str) -> torch.Tensor:
        return (self.H[name] / self.n[name]).float().cpu()


@torch.no_grad()
def quantize_gptq(model: GPT2LMHeadModel, windows: torch.Tensor, bits: int, group_size: int | None,
                  sym: bool, damp: float, act_order: bool, head_bits: int | None = None,
                  head_group: int | None = None, log=None, keep_zeros: bool = False,
                  precision_of: Callable[[str], tuple[int, int | None]] | None = None) -> GPT2LMHeadModel:
    """GPTQ every block projection (and the LM head when head_bits is set), block by block, in place.
    keep_zeros: the zeros of the block projections stay zero (a sparsified model). precision_of(name):
    (bits, group) per module instead of bits/group_size and head_bits/head_group (bits 16: left float)."""
    def grid(name: str) -> tuple[int, int | None]:
        if precision_of is not None:
            return precision_of(name)
        return (head_bits or FLOAT_BITS, head_group) if name == "lm_head" else (bits, group_size)

    calls = capture_block_inputs(model, windows)
    for i, block in enumerate(model.transformer.h):
        hs = HessianSum()
        locals_ = block_projections(block)  # a factorized projection: each factor (its input: x, then x @ down)
        with input_hooks({n: block.get_submodule(n) for n in locals_}, hs.add):
            run_block(block, calls)
        records = {}
        for local in locals_:
            name = f"transformer.h.{i}.{local}"
            b, g = grid(name)
            if b == FLOAT_BITS:
                continue
            w, bias = linear_weight(block.get_submodule(local))
            keep = (w != 0) if keep_zeros else None
            records[name] = gptq(name, w, bias, hs.get(local), b, g, sym, damp, act_order, keep)
        install(model, records)
        calls = run_block(block, calls)  # the quantized block's outputs feed block i+1
        if log:
            log.info("gptq: block %d/%d quantized", i + 1, model.config.n_layer)
    b, g = grid("lm_head")
    if b != FLOAT_BITS:
        hs = HessianSum()
        for c in calls:
            hs.add("lm_head", model.transformer.ln_f(c.hidden))
        w, _ = linear_weight(model.lm_head)
        install(model, {"lm_head": gptq("lm_head", w, None, hs.get("lm_head"), b, g, sym, damp, act_order)})
    return model


# -- the gptq method ---------------------------------------------------------------------------------

def run_gptq(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: torch.Tensor) -> GPT2LMHeadModel:
    bits, head_bits = cfg.weight_bits, cfg.head_bits
    sparse = sparsity_record(model.config) is not None  # a sparsify step's zeros are kept
    if sparse:
        log.info("gptq: the model is sparsified (%s): pruned weights stay zero", CONFIG_KEY)
    return quantize_gptq(model, windows, bits, cfg.group_for(bits), cfg.sym, cfg.damp, cfg.act_order,
                         head_bits, cfg.group_for(head_bits) if head_bits else None, log=log, keep_zeros=sparse,
                         precision_of=cfg.precision_of)
