"""Held-out checks during distillation: the split of the training stream, student vs teacher metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from compress.distillation.config import DistillConfig
from compress.distillation.losses import kl_loss
from compress.errors import UserError
from compress.divergence import safe_exp


def split_heldout(ids: torch.Tensor, cfg: DistillConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(train, held-out): the last cfg.eval_tokens tokens of the stream are held out (None when 0)."""
    need = cfg.eval_tokens + cfg.seq_len + 2
    if ids.numel() < need:
        raise UserError(f"distill: the training text has {ids.numel():,} tokens; seq_len + eval_tokens "
                        f"need at least {need:,} (lower eval_tokens, or give more data.train)")
    if not cfg.eval_tokens:
        return ids, None
    return ids[: -cfg.eval_tokens], ids[-cfg.eval_tokens:]


@torch.no_grad()
def heldout_eval(student: GPT2LMHeadModel, teacher: GPT2LMHeadModel, ids: torch.Tensor,
                 seq_len: int) -> dict[str, float]:
    """Student and teacher perplexity and KL(teacher || student) at T=1, on non-overlapping blocks.

    A quick in-training check (blocks restart the context); the plan's evaluation after the step is
    the reported number.
    """
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    n = (ids.numel() - 1) // seq_len
    inputs = ids[: n * seq_len].view(n, seq_len)  # (N, T)
    targets = ids[1: n * seq_len + 1].view(n, seq_len)  # (N, T)
    batch_size = max(1, 1024 // seq_len)  # ~1k positions per forward: (1k, V) fp32 logits are 200 MB at V=50k
    s_nll = t_nll = kl = 0.0
    for i in range(0, n, batch_size):
        x, y = inputs[i:i + batch_size].to(device), targets[i:i + batch_size].to(device).flatten()
        s = student(input_ids=x).logits.flatten(0, 1).float()  # (B*T, V)
        t = teacher(input_ids=x).logits.flatten(0, 1).float()  # (B*T, V)
        s_nll += float(F.cross_entropy(s, y, reduction="sum"))
        t_nll += float(F.cross_entropy(t, y, reduction="sum"))
        kl += float(kl_loss(s, t, 1.0)) * y.numel()
    student.train(was_training)
    count = n * seq_len
    return {"ppl": safe_exp(s_nll / count), "kl": kl / count, "teacher_ppl": safe_exp(t_nll / count)}
