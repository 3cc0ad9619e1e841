"""Wanda (Sun et al., 2023): score |W_ij| * ||x_j||_2, the weight times the L2 norm of its input channel
over the calibration tokens, compared within each output row (or each M-group of a row for N:M). A
weight multiplied by a large activation (GPT-2's outlier channels) survives even when it is small.
No weight update: the kept weights are the original ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.sparsity.registry import SparsityMethod
from compress.sparsity.pattern import select_keep

if TYPE_CHECKING:  # annotations: the method table is read at plan time, without torch
    import torch


def prune_wanda(name, w: torch.Tensor, stats, target, cfg) -> torch.Tensor:
    norms = stats.sq_sum.sqrt()  # (in,): ||x_j||_2 over every calibration token
    return w * select_keep(w.abs() * norms.unsqueeze(0), target)


METHOD = SparsityMethod("wanda", calibrates=True, hessian=False, prune=prune_wanda,
                        summary="|w| x input-channel L2 norm, per output row")
