"""Per-input-channel scales folded into what produces a layer's input, so the fp32 function of the
model is unchanged (SmoothQuant divides activations by s, AWQ does the same to scale weights up).

For a projection y = x @ W (HF Conv1D: W is [in, out]) and s > 0 per input channel,
    y = (x / s) @ (diag(s) W),
and x / s is made by the op before it:
    attn.c_attn, mlp.c_fc <- ln_1, ln_2 (LayerNorm weight and bias / s);
    attn.c_proj <- the value outputs of c_attn (attention mixes tokens, never channels, so dividing
                   the values by s divides its output by s).
mlp.c_proj follows a GELU, which nothing can scale through, so it has no fold.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@torch.no_grad()
def scale_input_rows(conv: Conv1D, s: torch.Tensor) -> None:
    """W <- diag(s) W for a Conv1D (weight (in, out): row j is input channel j)."""
    conv.weight.mul_(s.to(conv.weight).unsqueeze(1))


@torch.no_grad()
def fold_into_layernorm(ln: nn.LayerNorm, conv: Conv1D, s: torch.Tensor) -> None:
    """conv's input (ln's output) divided by s, conv's rows multiplied by s."""
    ln.weight.div_(s.to(ln.weight))
    ln.bias.div_(s.to(ln.bias))
    scale_input_rows(conv, s)


@torch.no_grad()
def fold_into_values(c_attn: Conv1D, c_proj: Conv1D, s: torch.Tensor) -> None:
    """attn.c_proj's input (the merged value heads) divided by s through c_attn's value columns."""
    E = c_proj.weight.shape[0]  # c_proj is (E, E); c_attn's columns are q | k | v, E each
    c_attn.weight[:, 2 * E:].div_(s.to(c_attn.weight))
    c_attn.bias[2 * E:].div_(s.to(c_attn.bias))
    scale_input_rows(c_proj, s)
