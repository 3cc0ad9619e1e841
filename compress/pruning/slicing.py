"""Slicing: build the smaller stock GPT2LMHeadModel that keeps exactly the given indices.

Knows nothing about importance; it takes a `Keep` and cuts every tensor consistently:

  wte, wpe, (untied lm_head)   columns = kept residual channels
  ln_1, ln_2, ln_f             kept residual channels
  attn.c_attn  (E, 3E)         rows = residual channels; columns = the kept heads' channels in q, k, v
  attn.c_proj  (E, E)          rows = the kept heads' channels; columns = residual channels
  mlp.c_fc     (E, I)          rows = residual channels; columns = kept MLP channels
  mlp.c_proj   (I, E)          rows = kept MLP channels; columns = residual channels

(HF's Conv1D stores weights as [in, out], the transpose of nn.Linear.) Removing a residual channel
is exact except for LayerNorm: its mean and variance are then taken over the kept channels only, so
even a channel that is always zero changes the normalised values a little. Heads, MLP channels and
blocks whose outputs are zero are removed exactly.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from compress.pruning.selection import Keep


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel positions of the given heads inside one of q, k, v: (nh',) -> (nh' * hs,)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


@torch.no_grad()
def slice_gpt2(model: GPT2LMHeadModel, keep: Keep) -> GPT2LMHeadModel:
    """A new GPT2LMHeadModel holding only the kept blocks, heads, MLP channels and residual channels."""
    cfg = model.config
    E, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    e = keep.embd
    if len(e) != keep.heads.shape[1] * hd:
        raise ValueError(f"{len(e)} residual channels for {keep.heads.shape[1]} heads of {hd}: GPT-2 needs "
                         "n_embd = n_head * head_dim")
    out = {"transformer.wte.weight": sd["transformer.wte.weight"][:, e],
           "transformer.wpe.weight": sd["transformer.wpe.weight"][:, e],
           "transformer.ln_f.weight": sd["transformer.ln_f.weight"][e],
           "transformer.ln_f.bias": sd["transformer.ln_f.bias"][e],
           "lm_head.weight": sd["lm_head.weight"][:, e]}  # the same tensor as wte when tied
    for new, old in enumerate(keep.layers):
        src, dst = f"transformer.h.{old}.", f"transformer.h.{new}."
        inner = head_channels(keep.heads[new], hd)  # (E',)
        qkv = torch.cat([inner, E + inner, 2 * E + inner])  # (3E',)
        m = keep.mlp[new]
        w = {k[len(src):]: v for k, v in sd.items() if k.startswith(src)}
        c_attn_w, c_attn_b = w["attn.c_attn.weight"][e][:, qkv], w["attn.c_attn.bias"][qkv]
        if cfg.scale_attn_by_inverse_layer_idx and new != old:
            # Eager attention divides scores by (layer_idx + 1) under this flag (HF's sdpa path ignores
            # it); the block moves from index old to new, so q is rescaled to keep its scores.
            q = slice(0, len(inner))
            c_attn_w[:, q] *= (new + 1) / (old + 1)
            c_attn_b[q] *= (new + 1) / (old + 1)
        out.update({
            dst + "ln_1.weight": w["ln_1.weight"][e], dst + "ln_1.bias": w["ln_1.bias"][e],
            dst + "attn.c_attn.weight": c_attn_w, dst + "attn.c_attn.bias": c_attn_b,
            dst + "attn.c_proj.weight": w["attn.c_proj.weight"][inner][:, e],
            dst + "attn.c_proj.bias": w["attn.c_proj.bias"][e],
            dst + "ln_2.weight": w["ln_2.weight"][e], dst + "ln_2.bias": w["ln_2.bias"][e],
            dst + "mlp.c_fc.weight": w["mlp.c_fc.weight"][e][:, m], dst + "mlp.c_fc.bias": w["mlp.c_fc.bias"][m],
            dst + "mlp.c_proj.weight": w["mlp.c_proj.weight"][m][:, e],
            dst + "mlp.c_proj.bias": w["mlp.c_proj.bias"][e],
        })
    config = GPT2Config.from_dict({**cfg.to_dict(), "n_layer": len(keep.layers), "n_head": keep.heads.shape[1],
                                   "n_embd": len(e), "n_inner": keep.mlp.shape[1]})
    small = GPT2LMHeadModel._from_config(config, attn_implementation=cfg._attn_implementation)
    small.load_state_dict({k: v.contiguous() for k, v in out.items()}, strict=True)
    param = next(model.parameters())
    return small.to(device=param.device, dtype=param.dtype).train(model.training)
