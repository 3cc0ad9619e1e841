"""Plain truncated SVD: the best rank-r approximation of W in the Frobenius norm (Eckart-Young),
blind to which inputs are large."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.lowrank.registry import LowRankMethod, Spectrum

if TYPE_CHECKING:  # imported when a step runs: the method table is read at plan time, without torch
    import torch


def decompose_svd(name: str, w: torch.Tensor, H, cfg) -> Spectrum:
    import torch

    U, s, Vh = torch.linalg.svd(w.double(), full_matrices=False)
    return Spectrum(U, s, Vh)


METHOD = LowRankMethod("svd", calibrates=False, decompose=decompose_svd,
                       summary="truncated SVD of the weight (no calibration)")
