"""Knowledge-distillation losses: soft-target KL, cross-entropy, hidden-state matching.

All take already-flattened tensors: logits (N, V) over N token positions, hidden states (N, C).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_T || q_T) averaged over positions and scaled by T^2 (Hinton et al. 2015).

    p_T, q_T are the teacher's and student's softmax at temperature T. The T^2 keeps the gradient
    size independent of T, so the weight of this term means the same at any temperature.
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, V)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")  # sum over V, mean over N
    return kl * temperature ** 2


def ce_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; targets (N,) are the true next tokens."""
    return F.cross_entropy(student_logits.float(), targets)


def hidden_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between (projected) student and teacher hidden states, (N, C) each, averaged over N.

    cosine: mean of 1 - cos(s, t), scale-free (DistilBERT's choice); mse: mean squared error per
    element, which also matches the residual stream's scale (TinyBERT's choice).
    """
    if kind == "cosine":
        return (1 - F.cosine_similarity(student_h.float(), teacher_h.float(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student_h.float(), teacher_h.float())
    raise ValueError(f"unknown hidden loss {kind!r}")


def even_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block (from 0) for each student block, evenly spaced and ending at the last block.

    6 -> 3 gives [1, 3, 5]; equal depths give the identity.
    """
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


class HiddenProjection(nn.Module):
    """One learned linear map per matched layer, student width -> teacher width (identity when equal).

    Trained with the student and discarded afterwards: the saved student is a stock GPT-2.
    """

    def __init__(self, n_layers: int, student_width: int, teacher_width: int):
        super().__init__()
        self.maps = nn.ModuleList()
        if student_width != teacher_width:
            self.maps.extend(nn.Linear(student_width, teacher_width, bias=False) for _ in range(n_layers))

    def forward(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.maps[i](h) if len(self.maps) else h
