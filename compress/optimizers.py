"""Optimizers a training step can name: AdamW, or Muon for the transformer blocks' matrices.

    adamw        AdamW; weight decay on matrices only (compress.training.adamw)
    muon         Muon (Newton-Schulz-orthogonalized momentum) for every 2-D weight inside the blocks,
                 AdamW for the rest (embeddings, tied head, LayerNorms, biases)

Muon's step is torch.optim.Muon's with `adjust_lr_fn="match_rms_adamw"` (scaled to AdamW's update
RMS, so one `lr` and one schedule drive both), except where its Newton-Schulz matmuls run: torch's
always casts them to bf16, which a CPU without AVX512-BF16 / AMX multiplies ~50x slower than fp32
(2.8 vs 156 GFLOP/s here with oneDNN held to AVX2): that would have made the quickstart's pretraining
slower, not faster, on an AVX2-only machine. Here they run in bf16 where the device has native bf16
(compress.precision), else in fp32. On the quickstart's 4x256 teacher Muon reached AdamW's held-out
perplexity in a third of the tokens (bench/results/2026-12-07-quickstart.md).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from compress.precision import cpu_bf16_flags
from compress.training import adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's quintic Newton-Schulz iteration
NS_STEPS = 5


def orthogonalize(update: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """U S' V^T of `update` (S' ~ 1): five quintic Newton-Schulz steps in `dtype`, as torch.optim.Muon's."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype, copy=True)  # the caller's tensor stays as it was
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T  # iterate on the wide side: (rows, rows) Gram matrices are the small ones
    x.div_(x.norm().clamp(min=1e-7))  # spectral norm <= 1
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and bool(cpu_bf16_flags()))


class Muon(torch.optim.Optimizer):
    """Muon on 2-D parameters: Nesterov momentum, orthogonalized, lr scaled by 0.2 sqrt(max(rows, cols))
    (AdamW's update RMS), decoupled weight decay; state `momentum_buffer` as torch.optim.Muon's."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.95):
        params = list(params)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        self.ns_dtype = torch.bfloat16 if params and native_bf16(params[0].device) else torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # the Optimizer protocol: re-evaluate the loss first
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                update = orthogonalize(p.grad.lerp(buf, momentum), self.ns_dtype)
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape[0], p.shape[1])))
        return loss


class Chained:
    """Several optimizers over disjoint parameters, stepped as one.

    Exposes what compress.training.train_loop and compress.checkpoint use: `param_groups` (every
    group, in order: the schedule sets their lr), `state` (one mapping shared by all, keyed by
    parameter, so checkpoints save and restore it as a single optimizer's), `step` and `zero_grad`.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.state = optimizers[0].state
        for opt in optimizers[1:]:
            self.state.update(opt.state)
            opt.state = self.state  # disjoint parameters: one table, no key is shared
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def block_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside GPT-2's blocks (c_attn, c_proj, c_fc, mlp.c_proj): Muon's parameters."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and ".h." in f".{name}"]


def muon_adamw(model: nn.Module, lr: float, weight_decay: float) -> Chained:
    """Muon for the block matrices, AdamW (compress.training.adamw) for everything else."""
    matrices = block_matrices(model)
    muon = Muon(matrices, lr=lr, weight_decay=weight_decay)
    rest = adamw(model, lr, weight_decay, exclude=matrices)
    return Chained(rest, muon)


OPTIMIZERS: dict[str, Callable[[nn.Module, float, float], torch.optim.Optimizer | Chained]] = {
    "adamw": lambda model, lr, weight_decay: adamw(model, lr, weight_decay),
    "muon": muon_adamw,
}
