"""Importance scores: how much each block, head, MLP channel and residual channel matters.

Every criterion returns the same `Scores` (higher = keep), computed once on the unpruned model;
selection.py turns scores into kept indices and slicing.py cuts the tensors. Groups, i.e. what one
structure owns (HF GPT-2 Conv1D weights are [in, out]):

  head h of block l      c_attn columns of h in q, k and v (+ bias), attn.c_proj rows of h
  MLP channel j of l     c_fc column j (+ bias), mlp.c_proj row j
  residual channel k     column k of wte, wpe (and an untied lm_head), every ln_1/ln_2/ln_f weight and
                         bias at k, c_attn and c_fc rows k, attn/mlp c_proj columns k (+ bias)
                         (one score for the whole model: the residual stream is shared by all blocks)
  block l                attn.c_proj and mlp.c_proj (weights + biases): zeroing them removes the block

Criteria:
  magnitude   sum of squared weights of the group (data-free)
  taylor      first-order loss change of removing the group, (sum_group grad * weight)^2, averaged
              over calibration batches (Molchanov et al. 2019)
  activation  mean activation magnitude on calibration data (Minitron): per-head attention output
              norm, |gelu output| per MLP channel, |LayerNorm output| per residual channel summed
              over every LayerNorm; blocks by Block Influence, 1 - cos(block input, block output)
              (ShortGPT)
  random      seeded uniform scores, the baseline any criterion must beat
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from compress.errors import UserError


@dataclass
class Scores:
    """Importance of every prunable structure of one model; higher means keep."""

    layers: torch.Tensor  # (L,)
    heads: torch.Tensor  # (L, nh)
    mlp: torch.Tensor  # (L, n_inner)
    embd: torch.Tensor  # (n_embd,)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Scores":
        return Scores(fn(self.layers), fn(self.heads), fn(self.mlp), fn(self.embd))

    def add_(self, other: "Scores") -> "Scores":
        for name in ("layers", "heads", "mlp", "embd"):
            getattr(self, name).add_(getattr(other, name))
        return self


def importance(model: GPT2LMHeadModel, criterion: str, batches: list[torch.Tensor] | None,
               seed: int = 0) -> Scores:
    """Scores of `model` under one criterion. batches: (B, T+1) token windows (taylor, activation)."""
    match criterion:
        case "magnitude":
            return group_sums(model, lambda p: p.detach().float() ** 2)
        case "random":
            return random_scores(model, seed)
        case "activation" | "taylor" if not batches:
            raise UserError(f"importance={criterion} needs calibration tokens (pass calib_ids)")
        case "activation":
            return activation_scores(model, batches)
        case "taylor":
            return taylor_scores(model, batches)
    raise UserError(f"importance: unknown criterion {criterion!r}")


def group_sums(model: GPT2LMHeadModel, value: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """Sum an elementwise quantity of the parameters (w^2, grad*w) over each group (see module doc)."""
    cfg, tr = model.config, model.transformer
    nh, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    embd = value(tr.wte.weight).sum(0) + value(tr.wpe.weight).sum(0)  # (E,)
    if model.lm_head.weight is not tr.wte.weight:
        embd += value(model.lm_head.weight).sum(0)
    embd += value(tr.ln_f.weight) + value(tr.ln_f.bias)
    layers, heads, mlp = [], [], []
    for block in tr.h:
        attn, ff = block.attn, block.mlp
        qkv = value(attn.c_attn.weight)  # (E, 3E): residual rows, q|k|v head columns
        attn_out = value(attn.c_proj.weight)  # (E, E): head rows, residual columns
        fc, fc_out = value(ff.c_fc.weight), value(ff.c_proj.weight)  # (E, I), (I, E)
        embd += value(block.ln_1.weight) + value(block.ln_1.bias) + value(block.ln_2.weight) + value(block.ln_2.bias)
        embd += qkv.sum(1) + attn_out.sum(0) + value(attn.c_proj.bias)
        embd += fc.sum(1) + fc_out.sum(0) + value(ff.c_proj.bias)
        per_col = qkv.sum(0) + value(attn.c_attn.bias)  # (3E,)
        heads.append(per_col.view(3, nh, hd).sum((0, 2)) + attn_out.sum(1).view(nh, hd).sum(1))  # (nh,)
        mlp.append(fc.sum(0) + value(ff.c_fc.bias) + fc_out.sum(1))  # (I,)
        layers.append(attn_out.sum() + value(attn.c_proj.bias).sum() + fc_out.sum() + value(ff.c_proj.bias).sum())
    return Scores(torch.stack(layers), torch.stack(heads), torch.stack(mlp), embd).map(lambda t: t.detach().cpu())


def random_scores(model: GPT2LMHeadModel, seed: int) -> Scores:
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    n_inner = cfg.n_inner or 4 * cfg.n_embd
    return Scores(torch.rand(cfg.n_layer, generator=gen), torch.rand(cfg.n_layer, cfg.n_head, generator=gen),
                  torch.rand(cfg.n_layer, n_inner, generator=gen), torch.rand(cfg.n_embd, generator=gen))


def taylor_scores(model: GPT2LMHeadModel, batches: list[torch.Tensor]) -> Scores:
    """Mean over batches of (sum over each group of grad * weight)^2."""
    device = next(model.parameters()).device
    params = list(model.parameters())
    flags, was_training = [p.requires_grad for p in params], model.training
    model.eval()  # no dropout: the gradient of the model as it will be used
    total = None
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for batch in batches:
                batch = batch.to(device)
                model.zero_grad(set_to_none=True)
                logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
                F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten()).backward()
                s = group_sums(model, lambda p: (p.grad * p).detach().float()).map(torch.square)
                total = s if total is None else total.add_(s)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return total.map(lambda t: t / len(batches))


@torch.no_grad()
def activation_scores(model: GPT2LMHeadModel, batches: list[torch.Tensor]) -> Scores:
    """Mean activation magnitudes on calibration batches, collected with forward hooks."""
    cfg, tr = model.config, model.transformer
    L, nh, hd = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
    sums = Scores(torch.zeros(L), torch.zeros(L, nh), torch.zeros(L, cfg.n_inner or 4 * cfg.n_embd),
                  torch.zeros(cfg.n_embd))
    resid: list[torch.Tensor] = []  # residual stream at each block boundary, (B, T, E) each

    def head_norms(layer):
        def hook(module, args):
            x = args[0]  # (B, T, E): attention output with heads merged, before c_proj
            sums.heads[layer] += x.float().unflatten(-1, (nh, hd)).norm(dim=-1).mean((0, 1)).cpu()
        return hook

    def mlp_acts(layer):
        def hook(module, args):
            sums.mlp[layer] += args[0].float().abs().mean((0, 1)).cpu()  # (I,) after gelu
        return hook

    def ln_out(module, args, out):
        sums.embd.add_(out.float().abs().mean((0, 1)).cpu())

    def block_input(module, args):
        resid.append(args[0].float())  # ln_1's (or ln_f's) input is the block's (the last block's output)

    handles = []
    for l, block in enumerate(tr.h):
        handles += [block.attn.c_proj.register_forward_pre_hook(head_norms(l)),
                    block.mlp.c_proj.register_forward_pre_hook(mlp_acts(l)),
                    block.ln_1.register_forward_pre_hook(block_input),
                    block.ln_1.register_forward_hook(ln_out), block.ln_2.register_forward_hook(ln_out)]
    handles += [tr.ln_f.register_forward_pre_hook(block_input), tr.ln_f.register_forward_hook(ln_out)]
    device = next(model.parameters()).device
    try:
        for batch in batches:
            resid.clear()
            tr(input_ids=batch[:, :-1].to(device))  # the body only: the LM head plays no part here
            for l in range(L):
                cos = F.cosine_similarity(resid[l], resid[l + 1], dim=-1)  # (B, T)
                sums.layers[l] += (1 - cos).mean().cpu()
    finally:
        for h in handles:
            h.remove()
    return sums.map(lambda t: t / len(batches))
