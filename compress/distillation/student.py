"""A fresh student initialised from teacher layers (DistilBERT / DistilGPT2 style).

The student keeps the teacher's embeddings, final layer norm and a subset of its blocks; optionally
every MLP is sliced to its largest neurons. It is a stock GPT2LMHeadModel with a smaller config.
"""

from __future__ import annotations

import copy

import torch
from transformers import GPT2LMHeadModel

from compress.distillation.config import StudentInit
from compress.errors import UserError


def pick_layers(n_teacher: int, n_student: int) -> list[int]:
    """n_student evenly spaced block indices of n_teacher, first and last included (6 -> 3: [0, 2, 5])."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def student_layers(init: StudentInit, n_teacher: int) -> list[int]:
    """The teacher blocks a StudentInit keeps; UserError when they do not fit the teacher."""
    if init.layers is not None:
        if max(init.layers) >= n_teacher:
            raise UserError(f"student.layers: teacher has {n_teacher} blocks (0..{n_teacher - 1}), "
                            f"got {init.layers}")
        return list(init.layers)
    if init.n_layer > n_teacher:
        raise UserError(f"student.n_layer ({init.n_layer}) exceeds the teacher's {n_teacher} blocks")
    return pick_layers(n_teacher, init.n_layer)


@torch.no_grad()
def slice_mlp(block: torch.nn.Module, n_inner: int) -> None:
    """Keep the n_inner MLP neurons with the largest weight norms (in and out), in place.

    GPT-2's Conv1D stores weights as (in, out): c_fc.weight (C, 4C), c_proj.weight (4C, C).
    """
    mlp = block.mlp
    score = mlp.c_fc.weight.norm(dim=0) * mlp.c_proj.weight.norm(dim=1)  # (4C,)
    keep = score.topk(n_inner).indices.sort().values
    mlp.c_fc.weight = torch.nn.Parameter(mlp.c_fc.weight[:, keep].clone())
    mlp.c_fc.bias = torch.nn.Parameter(mlp.c_fc.bias[keep].clone())
    mlp.c_fc.nf = n_inner
    mlp.c_proj.weight = torch.nn.Parameter(mlp.c_proj.weight[keep, :].clone())


def student_from_teacher(teacher: GPT2LMHeadModel, init: StudentInit) -> GPT2LMHeadModel:
    """A new GPT2LMHeadModel built from copies of the teacher's embeddings, ln_f and chosen blocks."""
    layers = student_layers(init, teacher.config.n_layer)
    inner = teacher.config.n_inner or 4 * teacher.config.n_embd
    if init.n_inner is not None and init.n_inner > inner:
        raise UserError(f"student.n_inner ({init.n_inner}) exceeds the teacher's MLP width {inner}")
    config = copy.deepcopy(teacher.config)
    config.n_layer = len(layers)
    if init.n_inner is not None:
        config.n_inner = init.n_inner
    student = GPT2LMHeadModel(config).to(next(teacher.parameters()).device)
    t, s = teacher.transformer, student.transformer
    s.wte.load_state_dict(t.wte.state_dict())
    s.wpe.load_state_dict(t.wpe.state_dict())
    s.ln_f.load_state_dict(t.ln_f.state_dict())
    for dst, src in zip(s.h, layers):
        block = copy.deepcopy(t.h[src])
        if init.n_inner is not None and init.n_inner < inner:
            slice_mlp(block, init.n_inner)
        dst.load_state_dict(block.state_dict())
    student.tie_weights()
    return student.train()
