"""Fixtures of the pruning tests: planting (un)important structures in a GPT-2."""

from __future__ import annotations

import pytest
import torch


@torch.no_grad()
def scale_structures(model, factor: float, blocks=(), heads=None, mlp=None, embd=()) -> None:
    """Multiply by `factor` every weight a structure owns (the groups of compress/pruning/importance.py).

    factor 0 makes the structure contribute nothing: a block's c_proj outputs, a head's q/k/v columns
    and c_proj rows, an MLP channel's c_fc column and c_proj row, or a residual channel everywhere.
    heads / mlp: {block index: [head or channel indices]}.
    """
    cfg, tr = model.config, model.transformer
    E, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    for l in blocks:
        for m in (tr.h[l].attn.c_proj, tr.h[l].mlp.c_proj):
            m.weight.mul_(factor)
            m.bias.mul_(factor)
    for l, hs in (heads or {}).items():
        attn = tr.h[l].attn
        for h in hs:
            for off in (0, E, 2 * E):  # q, k, v
                attn.c_attn.weight[:, off + h * hd: off + (h + 1) * hd] *= factor
                attn.c_attn.bias[off + h * hd: off + (h + 1) * hd] *= factor
            attn.c_proj.weight[h * hd:(h + 1) * hd, :] *= factor
    for l, chans in (mlp or {}).items():
        ff = tr.h[l].mlp
        ff.c_fc.weight[:, chans] *= factor
        ff.c_fc.bias[chans] *= factor
        ff.c_proj.weight[chans, :] *= factor
    for k in embd:
        tr.wte.weight[:, k] *= factor
        tr.wpe.weight[:, k] *= factor
        for ln in [tr.ln_f] + [b.ln_1 for b in tr.h] + [b.ln_2 for b in tr.h]:
            ln.weight[k] *= factor
            ln.bias[k] *= factor
        for b in tr.h:
            b.attn.c_attn.weight[k, :] *= factor
            b.mlp.c_fc.weight[k, :] *= factor
            for m in (b.attn.c_proj, b.mlp.c_proj):
                m.weight[:, k] *= factor
                m.bias[k] *= factor


@pytest.fixture
def plant():
    """scale_structures(model, factor, blocks=..., heads=..., mlp=..., embd=...)."""
    return scale_structures
