"""Magnitude pruning: the smallest |w| go (per output row, or per M-group for an N:M pattern)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.sparsity.registry import SparsityMethod
from compress.sparsity.pattern import select_keep

if TYPE_CHECKING:  # annotations: the method table is read at plan time, without torch
    import torch


def prune_magnitude(name, w: torch.Tensor, stats, target, cfg) -> torch.Tensor:
    return w * select_keep(w.abs(), target)


METHOD = SparsityMethod("magnitude", calibrates=False, hessian=False, prune=prune_magnitude,
                        summary="smallest |w| pruned; no calibration")
