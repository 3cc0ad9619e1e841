"""Plain truncated SVD: the best rank-r approximation of W in the Frobenius norm (Eckart-Young),
blind to which inputs are large."""

from __future__ import annotations

import torch

from compress.lowrank.registry import LowRankMethod, Spectrum


def decompose_svd(name: str, w: torch.Tensor, H, cfg) -> Spectrum:
    U, s, Vh = torch.linalg.svd(w.double(), full_matrices=False)
    return Spectrum(U, s, Vh)


METHOD = LowRankMethod("svd", calibrates=False, decompose=decompose_svd,
                       summary="truncated SVD of the weight (no calibration)")
