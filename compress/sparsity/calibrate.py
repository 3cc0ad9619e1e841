"""Calibration statistics of each pruned projection's inputs, gathered block by block (as GPTQ does:
compress/quantization/calibration.py): block i sees the inputs made by the already-pruned blocks
0..i-1, so later blocks calibrate on what the sparse model really computes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.quantization.gptq import HessianSum


@dataclass
class LayerStats:
    sq_sum: torch.Tensor  # (in,) sum over tokens of x_j^2 (fp32, CPU)
    H: torch.Tensor | None  # (in, in) mean x x^T, for methods with hessian=True
    tokens: int


class StatsSum:
    """Running per-layer sums of a block's inputs: squared norms always, the Hessian when asked."""

    def __init__(self, hessian: bool):
        self.hessians = HessianSum() if hessian else None
        self.sq: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        sq = x.double().pow(2).sum(dim=0)
        self.sq[name] = self.sq[name] + sq if name in self.sq else sq
        self.n[name] = self.n.get(name, 0) + x.shape[0]
        if self.hessians is not None:
            self.hessians.add(name, x)

    def get(self, name: str) -> LayerStats:
        H = self.hessians.get(name) if self.hessians is not None else None
        return LayerStats(self.sq[name].float().cpu(), H, self.n[name])
