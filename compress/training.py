"""Pieces shared by the training loops (pretrain, distill): batches, schedule, optimizer."""

from __future__ import annotations

import math

import torch


def sample_batch(ids: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int,
                 rank: int = 0) -> torch.Tensor:
    """Random windows of seq_len + 1 tokens from a token stream, a pure function of (seed, step, rank),
    so a resumed run sees exactly the batches an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + rank)
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=gen)
    return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])  # (B, T+1)


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, layer norms)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, max_blocks: int = 32) -> float:
    """Mean next-token loss over the first non-overlapping blocks of a held-out stream (a quick check)."""
    n = min(max_blocks, (ids.numel() - 1) // seq_len)
    if n == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = ids[: n * seq_len + 1]
    inputs = x[:-1].view(n, seq_len).to(device)
    labels = x[1:].view(n, seq_len).to(device)
    total = 0.0
    for i in range(0, n, 8):
        logits = model(input_ids=inputs[i:i + 8]).logits
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels[i:i + 8].reshape(-1), reduction="sum"))
    model.train(was_training)
    return total / (n * seq_len)
