"""Shape arithmetic of a GPT-2: what a prune config turns a model shape into, and what that costs.

Used twice: at plan time (impossible targets are reported before any model loads) and at run time
(the target shape the selection must fill). Pure arithmetic, no tensors.

The parameter budget (`params: 0.75`) is turned into a shape by one fixed, data-free rule, so that
every importance criterion prunes to the same shape (and the same latency):

  1. drop `layers` blocks first (if given);
  2. find the fraction s at which heads, n_embd and the MLP width, all shrunk *together* by s, would
     hit the budget exactly (continuous bisection on the parameter formula);
  3. round the head count to the nearest whole head, round(s * n_head), at least 1 (and to the nearest
     count whose n_embd is a multiple of `round_to`'s n_embd, when one is given); n_embd follows as
     n_head * head_dim;
  4. the MLP width n_inner absorbs the rounding: it is solved from the budget (the parameter count is
     linear in n_inner), rounded to a multiple of `round_to` (below) and clamped to n_inner. When
     it is clamped, the result lands as close to the budget as that head count allows; the step
     reports the fraction it really kept.

A pruned n_inner (from `mlp:` or the budget) is a multiple of `round_to` (default 64), so that the
layers stay tensor-core shaped and quantization groups of 32/64 divide them; `round_to: 1` keeps the
exact count. `round_to: {n_inner: 128, n_embd: 128}` also rounds a pruned n_embd (from `width:` or
the budget): the head count moves to the nearest count whose n_embd is a multiple (TensorRT
Edge-LLM's INT4 takes only widths that are multiples of 128). A single int rounds n_inner alone, as it
always did.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd
from typing import TYPE_CHECKING

from compress.model_shape import Shape
from evalsuite.size import gpt2_param_count

if TYPE_CHECKING:
    from compress.pruning.config import PruneConfig


@dataclass(frozen=True)
class Rounding:
    """The multiple each pruned width is rounded to (1: exact)."""

    n_inner: int = 64
    n_embd: int = 1


def param_count(shape: Shape, scale: float = 1.0) -> float:
    """Parameters of a GPT2LMHeadModel of this shape (tied head counted once).

    `scale` shrinks n_embd and n_inner together (continuously) for the budget rule's bisection.
    """
    return gpt2_param_count(shape.vocab_size or 0, shape.n_positions, shape.n_layer, shape.n_embd * scale,
                            shape.n_inner * scale, shape.tied)


def removed(ratio: float, n: int) -> int:
    """How many of n structures a ratio removes (nearest whole number, halves rounded up)."""
    return int(ratio * n + 0.5)


def target_problems(shape: Shape, cfg: "PruneConfig") -> list[str]:
    """Why cfg cannot be applied to a model of this shape (empty when it can)."""
    problems = []
    if cfg.layers >= shape.n_layer:
        problems.append(f"layers={cfg.layers} removes all {shape.n_layer} blocks of the {shape} model "
                        f"(at most {shape.n_layer - 1})")
    if removed(cfg.width, shape.n_head) >= shape.n_head:
        problems.append(f"width={cfg.width} leaves 0 of {shape.n_head} attention heads "
                        f"(keep at least one: width < {(shape.n_head - 0.5) / shape.n_head:.3g})")
    if removed(cfg.mlp, shape.n_inner) >= shape.n_inner:
        problems.append(f"mlp={cfg.mlp} leaves 0 of {shape.n_inner} MLP channels")
    if cfg.params is not None and shape.vocab_size is not None and cfg.layers < shape.n_layer:
        smallest = param_count(_width_shape(shape, cfg.layers, 1, 1)) / param_count(shape)
        if cfg.params < smallest:
            problems.append(f"params={cfg.params} is below the smallest model pruning can make from "
                            f"the {shape} model (one head, one MLP channel: {smallest:.3f} of the parameters)")
    multiple = cfg.rounding.n_embd
    heads_pruned = cfg.width > 0 or cfg.params is not None
    if heads_pruned and heads_per_multiple(shape.head_dim, multiple) > shape.n_head and shape.n_embd > multiple:
        problems.append(f"round_to n_embd {multiple}: no head count of the {shape} model ({shape.n_head} heads of "
                        f"{shape.head_dim}) makes n_embd a multiple of {multiple}")
    if cfg.seq_len is not None and cfg.seq_len > shape.n_positions:
        problems.append(f"seq_len={cfg.seq_len} exceeds the model's {shape.n_positions} positions")
    return problems


def target_shape(shape: Shape, cfg: "PruneConfig") -> Shape:
    """The shape cfg prunes `shape` to (call target_problems first: this assumes it is possible)."""
    r = cfg.rounding
    if cfg.params is not None:
        return budget_shape(shape, cfg.params, cfg.layers, r.n_inner, r.n_embd)
    n_inner = shape.n_inner - removed(cfg.mlp, shape.n_inner)
    n_head = round_heads(shape.n_head - removed(cfg.width, shape.n_head), shape.n_head, shape.head_dim, r.n_embd)
    return _width_shape(shape, cfg.layers, n_head, round_channels(n_inner, shape.n_inner, r.n_inner))


def round_channels(n: int, full: int, multiple: int) -> int:
    """n of `full` MLP channels, rounded to the nearest multiple of `multiple` (at least one multiple,
    at most full). Unchanged when nothing is pruned or the layer is no wider than one multiple."""
    if n >= full or multiple <= 1 or full <= multiple:
        return min(n, full)
    return min(full, max(multiple, multiple * round(n / multiple)))


def heads_per_multiple(head_dim: int, multiple: int) -> int:
    """The fewest heads whose n_embd (heads x head_dim) is a multiple of `multiple`; head counts that
    give one are the multiples of this."""
    return multiple // gcd(multiple, head_dim)


def round_heads(n: int, full: int, head_dim: int, multiple: int) -> int:
    """n of `full` heads, rounded to the nearest count whose n_embd is a multiple of `multiple` (a tie to
    the smaller; at least one such count, at most full). Unchanged when nothing is pruned, the model is
    no wider than one multiple, or no count of at most `full` heads gives one (target_problems says so)."""
    step = heads_per_multiple(head_dim, multiple)
    if n >= full or multiple <= 1 or full * head_dim <= multiple or step > full:
        return min(n, full)
    nearest = (2 * n + step - 1) // (2 * step)  # n / step rounded, a tie to fewer heads: pruning was asked for
    return min(full // step * step, max(step, step * nearest))


def budget_shape(shape: Shape, keep: float, layers: int = 0, round_to: int = 1, embd_round_to: int = 1) -> Shape:
    """The shape that keeps about `keep` of the parameters, by the rule in this module's docstring."""
    if shape.vocab_size is None:
        raise ValueError("the parameter budget needs the vocabulary size")
    target = keep * param_count(shape)
    deep = replace(shape, n_layer=shape.n_layer - layers)
    if param_count(deep) <= target:
        return deep  # dropping the blocks alone meets the budget
    lo, hi = 0.0, 1.0  # param_count(deep, s) grows with s: bisect for the uniform width fraction
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if param_count(deep, mid) < target else (lo, mid)
    n_head = min(shape.n_head, max(1, round(lo * shape.n_head)))
    n_head = round_heads(n_head, shape.n_head, shape.head_dim, embd_round_to)
    # The count is linear in n_inner at a fixed head count: solve it from two points.
    at0 = param_count(_width_shape(shape, layers, n_head, 0))
    per_channel = param_count(_width_shape(shape, layers, n_head, 1)) - at0
    n_inner = min(shape.n_inner, max(1, round((target - at0) / per_channel)))
    return _width_shape(shape, layers, n_head, round_channels(n_inner, shape.n_inner, round_to))


def _width_shape(shape: Shape, layers: int, n_head: int, n_inner: int) -> Shape:
    return replace(shape, n_layer=shape.n_layer - layers, n_head=n_head, n_inner=n_inner)
