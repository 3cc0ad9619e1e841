"""What a factorization method is (`LowRankMethod`, `Spectrum`); the table of them is
compress.lowrank.methods. This module imports no method, so the methods import it without a cycle.

A method turns w [out, in] (and the calibration statistics of its input, when it calibrates) into a
`Spectrum`: w == left @ diag(s) @ right exactly, s descending, so that keeping the first r terms is the
method's best rank-r approximation (in its own norm). Truncation, rank budgets and the factors' layout
are shared (api.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from compress.lowrank.config import FactorizeConfig


@dataclass
class Spectrum:
    left: torch.Tensor  # [out, k]
    s: torch.Tensor  # [k], descending: the weight of each term in the method's error norm
    right: torch.Tensor  # [k, in]

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(first [in, r], second [r, out]) in Conv1D orientation, sqrt(s) on each side."""
        root = self.s[:rank].clamp_min(0).sqrt()
        first = (self.right[:rank] * root.unsqueeze(1)).t()
        second = (self.left[:, :rank] * root.unsqueeze(0)).t()
        return first.contiguous(), second.contiguous()


# decompose(name, w [out, in], H [in, in] mean x x^T or None, cfg) -> Spectrum
DecomposeFn = Callable[[str, "torch.Tensor", "torch.Tensor | None", "FactorizeConfig"], Spectrum]


@dataclass(frozen=True)
class LowRankMethod:
    name: str
    calibrates: bool  # reads the input covariance of every factorized projection from data.train
    decompose: DecomposeFn
    summary: str = ""
