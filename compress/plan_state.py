"""What plan validation knows about the model between steps, threaded through every `check(state)`.

    state = source.check(PlanState(train_data=..., eval_seq_len=...))   # the model: its shape
    state = steps[0].check(state)  -> (next state, problems)             # prune: a smaller shape
    ...

Each step config reads the facts it needs from the state and returns the state its output has; no
step config looks at another step's config, so a new step kind (or a new quantization method)
describes itself and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

from compress.model_shape import Shape

# (dimension, divisor) -> a setting of the step that made the dimension that would make it divisible,
# e.g. ("n_embd", 128) -> "width 0.167 or 0.333"; None when that step has no such setting.
Fix = Callable[[str, int], "str | None"]


class Problem(NamedTuple):
    """One plan problem of a step: `key` is the config key it is about ("group_size"; "" for the step)."""

    msg: str
    key: str = ""
    note: bool = False  # a remark for --dry-run (e.g. a check that waits for the model), not an error


@dataclass(frozen=True)
class Origin:
    """Which step made the model's current widths: named in the errors those widths cause."""

    by: str  # "steps[0].prune (width 0.25)", or "model gpt2"
    fix: Fix | None = None


@dataclass(frozen=True)
class Quantized:
    """The quantization a step left on the model (what later steps and exports must respect)."""

    by: str  # "steps[2].quantize"
    method: str
    bits: int  # weight bits of the block projections
    group_size: int | None  # input channels per scale; None: per-channel (or the method's own blocks)
    sym: bool
    exportable: bool  # has an ONNX form (MatMulNBits / Q/DQ of its own integers)
    # (bits, group_size) of every grid the modules use when `overrides` make them differ (16: float), in the
    # order first met; empty: every quantized module at bits/group_size
    grids: tuple[tuple[int, int | None], ...] = ()


@dataclass(frozen=True)
class Sparsity:
    """The weight sparsity a sparsify step left on the block projections (compress/sparsity)."""

    by: str  # "steps[0].sparsify"
    method: str  # magnitude, wanda, sparsegpt
    pattern: str | None  # "2:4" (N kept of every M consecutive input weights); None: unstructured
    fraction: float  # zeros per matrix, requested (1 - N/M for a pattern)
    layers: tuple[str, ...]  # the projections pruned ("attn.c_attn", ...)


@dataclass(frozen=True)
class Factorized:
    """The block projections a factorize step replaced by two low-rank matmuls (compress/lowrank)."""

    by: str  # "steps[0].factorize"
    method: str  # svd, whiten
    layers: tuple[str, ...]  # the projections factorized ("attn.c_attn", ...)
    rank: int | None = None  # one rank for every factor (factorize rank:), None: chosen when it runs
    rank_multiple: int = 1  # every rank is a multiple of this


@dataclass(frozen=True)
class PlanState:
    """The model as the next step will receive it, as far as the plan alone tells."""

    train_data: bool  # the plan has data.train (calibration, training)
    eval_seq_len: int | None  # data.eval.seq_len when perplexity is measured (eval.perplexity)
    latency: tuple[int, int] | None = None  # eval.latency (prompt, new_tokens); None: no latency run
    at: str = "model"  # key path of the step being checked: "steps[2].quantize"
    shape: Shape | None = None  # None: unknown until the model loads (see `unknown`)
    unknown: str = ""  # why the shape is unknown
    origins: tuple[tuple[str, Origin], ...] = ()  # (dimension, the step that made it), latest first
    base: Shape | None = None  # the plan's base model (a distill teacher: base)
    quantized: Quantized | None = None
    artifact: str = "torch"  # what the last step produced: torch (a model dir), onnx, tensorrt
    sparsity: Sparsity | None = None  # zeros a sparsify step made (quantize keeps them; distill refills them)
    factorized: Factorized | None = None  # low-rank factors (distill and export take them; prune, sparsify
    #                                      and quantize do not)

    def origin(self, dim: str) -> Origin:
        """The step that made dimension `dim` (n_layer, n_embd, n_inner) of the current shape."""
        return next((o for d, o in self.origins if d in (dim, "*")), Origin("the model"))

    def with_shape(self, shape: Shape | None, origins: dict[str, Origin] | None = None,
                   unknown: str = "") -> "PlanState":
        """The state after a step that makes `shape` (`origins`: the dimensions it changed, "*": all)."""
        made = tuple((origins or {}).items())
        return replace(self, shape=shape, unknown=unknown if shape is None else "", origins=made + self.origins)


Check = tuple[PlanState, list[Problem]]
