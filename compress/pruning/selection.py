"""Selection: from importance scores and a target shape to the indices that stay.

Counts are uniform (every kept block keeps the same number of heads and MLP channels) so the result
is a stock GPT-2, but *which* heads and channels stay is chosen per block: a block's heads and MLP
channels live in that block's own spaces. Residual channels are one choice for the whole model,
because the residual stream (embeddings, every block's input and output, ln_f) is one space.

Heads and residual channels are chosen independently: the heads that go are a block-internal
choice (columns of q, k, v and rows of c_proj), while the residual channels that go are picked by
their own score; only their counts are tied, n_embd = n_head * head_dim, a GPT2Config constraint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.pruning.importance import Scores
from compress.pruning.shapes import Shape


@dataclass(frozen=True)
class Keep:
    """What survives pruning, as indices into the original model (each ascending)."""

    layers: list[int]  # kept blocks
    heads: torch.Tensor  # (L', nh') kept heads of each kept block
    mlp: torch.Tensor  # (L', I') kept MLP channels of each kept block
    embd: torch.Tensor  # (E',) kept residual channels

    @classmethod
    def everything(cls, shape: Shape) -> "Keep":
        L = shape.n_layer
        return cls(list(range(L)), torch.arange(shape.n_head).repeat(L, 1),
                   torch.arange(shape.n_inner).repeat(L, 1), torch.arange(shape.n_embd))


def top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ascending; ties keep the lower index (deterministic)."""
    order = torch.argsort(score, descending=True, stable=True)
    return order[:k].sort().values


def select(scores: Scores, target: Shape) -> Keep:
    """Keep the highest-scoring structures, in the counts of the target shape."""
    layers = top(scores.layers, target.n_layer).tolist()
    heads = torch.stack([top(scores.heads[l], target.n_head) for l in layers])
    mlp = torch.stack([top(scores.mlp[l], target.n_inner) for l in layers])
    embd = top(scores.embd, target.n_embd)
    return Keep(layers, heads, mlp, embd)
