"""Activation-aware SVD by whitening (SVD-LLM, Wang et al., 2024).

The output error of a weight error dW on inputs x is E|x dW^T|^2 = ||dW L||_F^2 with C = L L^T the
inputs' second moment (mean x x^T, Cholesky factor L). So truncating the SVD of W L (not of W) gives
the best rank-r approximation for the output on calibration-like inputs, each truncated singular value
being exactly the output error it adds: W L = U S V^T  ->  W ~ U_r S_r (V_r^T L^-1).
C is damped by `damp` x mean(diag C) so that inputs that never vary still factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.errors import UserError
from compress.lowrank.registry import LowRankMethod, Spectrum

if TYPE_CHECKING:  # imported when a step runs: the method table is read at plan time, without torch
    import torch


def decompose_whitened(name: str, w: torch.Tensor, H: torch.Tensor, cfg) -> Spectrum:
    import torch

    C = H.double()
    C = C + cfg.damp * torch.mean(torch.diag(C)).clamp_min(1e-12) * torch.eye(C.shape[0], dtype=C.dtype)
    L, info = torch.linalg.cholesky_ex(C)
    if int(info):
        raise UserError(f"whiten: the input covariance of {name} is not positive definite; raise damp (now {cfg.damp})")
    U, s, Vh = torch.linalg.svd(w.double() @ L, full_matrices=False)
    right = torch.linalg.solve_triangular(L, Vh, upper=False, left=False)  # Vh @ L^-1
    return Spectrum(U, s, right)


METHOD = LowRankMethod("whiten", calibrates=True, decompose=decompose_whitened,
                       summary="SVD of W whitened by the Cholesky factor of the input covariance (SVD-LLM)")
