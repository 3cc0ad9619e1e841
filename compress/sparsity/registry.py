"""What a sparsity method is (`SparsityMethod`); the table of them is compress.sparsity.methods. This
module imports no method, so the methods import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from compress.sparsity.calibrate import LayerStats
    from compress.sparsity.config import SparsifyConfig
    from compress.sparsity.pattern import Target

# prune(name, w [out, in], stats (None when the method does not calibrate), target, cfg) -> new w [out, in]
PruneFn = Callable[[str, "torch.Tensor", "LayerStats | None", "Target", "SparsifyConfig"], "torch.Tensor"]


@dataclass(frozen=True)
class SparsityMethod:
    name: str
    calibrates: bool  # reads calibration windows of data.train (block by block)
    hessian: bool  # needs the inputs' second moment H = mean x x^T (else only per-channel norms)
    prune: PruneFn
    summary: str = ""
