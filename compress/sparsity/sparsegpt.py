"""SparseGPT (Frantar & Alistarh, 2023): prune column by column and spread each pruned weight's error
over the columns not yet visited, weighted by the inverse Hessian H = X^T X of the layer's inputs (the
OBS update GPTQ makes for rounding errors; the damped inverse-Hessian factor is GPTQ's:
compress/quantization/gptq.py).

Columns go in blocks of `block_size`. The mask of a block is chosen when the block starts, from
w^2 / [H^-1]_jj^2 of the already-updated weights (the OBS saliency): per output row for unstructured
targets (round(fraction * in) weights per row in total, spread over the blocks), per M-group for an N:M
pattern (chosen when the group's first column is reached, so the group sees the updates before it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.sparsity.registry import SparsityMethod
from compress.sparsity.pattern import Target, select_keep

if TYPE_CHECKING:  # annotations: the method table is read at plan time, without torch
    import torch


def sparsegpt(name: str, w: torch.Tensor, H: torch.Tensor, target: Target, damp: float,
              block_size: int) -> torch.Tensor:
    """The pruned and updated w [out, in] given the Hessian H [in, in] of its inputs."""
    import torch

    with torch.no_grad():
        return _sparsegpt(name, w, H, target, damp, block_size)


def _sparsegpt(name: str, w: torch.Tensor, H: torch.Tensor, target: Target, damp: float,
               block_size: int) -> torch.Tensor:
    import torch

    from compress.quantization.gptq import drop_dead_inputs, inverse_hessian_factor

    W = w.clone().float()
    in_f = W.shape[1]
    H = H.clone().float()
    drop_dead_inputs(W, H)
    Hinv = inverse_hessian_factor(H, damp, name, "sparsegpt")
    step = block_size - block_size % target.m if target.m else block_size  # whole M-groups per block
    for i1 in range(0, in_f, step):
        i2 = min(i1 + step, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        Err1 = torch.zeros_like(W1)
        if target.m:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        else:  # this block's share of the row's pruned count: exact over the whole row
            k = target.pruned_per_row(i2) - target.pruned_per_row(i1)
            keep1 = select_keep(W1 ** 2 / d.unsqueeze(0) ** 2, Target(k / (i2 - i1)))
        for i in range(i2 - i1):
            if target.m and i % target.m == 0:
                g = slice(i, i + target.m)
                keep1[:, g] = select_keep(W1[:, g] ** 2 / d[g].unsqueeze(0) ** 2, target)
            col = W1[:, i]
            q = col * keep1[:, i]
            err = (col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


def prune_sparsegpt(name, w: torch.Tensor, stats, target: Target, cfg) -> torch.Tensor:
    return sparsegpt(name, w, stats.H, target, cfg.damp, cfg.block_size)


METHOD = SparsityMethod("sparsegpt", calibrates=True, hessian=True, prune=prune_sparsegpt,
                        summary="OBS row updates with the inverse Hessian of the inputs (GPTQ's machinery)")
