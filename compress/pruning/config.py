"""PruneConfig: the `prune` step's settings, and the plan-time check of its targets (with the shape
it leaves, computed by compress/pruning/shapes.py exactly as the step will prune)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.plan_state import Check, Origin, PlanState, Problem
from compress.plan_types import Seed
from compress.pruning.shapes import Rounding, Shape, removed, target_problems, target_shape
from compress.step_api import StepConfig

Criterion = Literal["magnitude", "taylor", "activation", "random"]
CALIBRATED: tuple[str, ...] = ("taylor", "activation")  # criteria that read calibration tokens
Multiple = Annotated[int, Field(ge=1, le=4096)]


class RoundTo(BaseModel):
    """`round_to: {n_inner: 128, n_embd: 128}`: the multiple each pruned width is rounded to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_inner: Multiple = Field(64, description="a pruned MLP width is a multiple of this")
    n_embd: Multiple = Field(1, description="a pruned n_embd (heads x head_dim) is a multiple of this: the "
                                            "head count is rounded to the nearest count that gives one")


class PruneConfig(StepConfig):
    """Structured pruning to a smaller stock GPT-2: whole blocks, MLP channels, heads with n_embd.

        - prune: {importance: activation, layers: 1, mlp: 0.5, width: 0.25}
        - prune: {importance: taylor, params: 0.75}     # keep 3/4 of the parameters
    """

    kind: ClassVar[str] = "prune"
    changes_weights: ClassVar[bool] = True

    importance: Criterion = Field("activation", description="how channels, heads and blocks are ranked")
    layers: int = Field(0, ge=0, le=1000, description="transformer blocks to drop")
    mlp: float = Field(0.0, ge=0, lt=1, description="fraction of MLP channels (n_inner) to remove")
    width: float = Field(0.0, ge=0, lt=1, description="fraction of attention heads to remove; n_embd "
                                                      "shrinks with them (head_dim is kept)")
    params: float | None = Field(None, gt=0, le=1, description="keep this fraction of the parameters; "
                                 "the step chooses width and mlp (see compress/pruning/shapes.py)")
    round_to: Multiple | RoundTo = Field(64, description="a pruned n_inner is a multiple of this (tensor cores, "
                                         "quantization groups; 1 keeps the exact count); {n_inner: 128, n_embd: "
                                         "128} rounds n_embd too (TensorRT Edge-LLM INT4, groups of 128)")
    calib_tokens: int = Field(16384, ge=64, le=100_000_000, description="calibration tokens (taylor, activation)")
    seq_len: int | None = Field(None, ge=8, le=8192, description="calibration window; default min(256, n_positions)")
    batch_size: int = Field(8, ge=1, le=1024, description="calibration windows per forward pass")
    seed: Seed = Field(0, description="picks the calibration windows and the random criterion's scores")
    correct_layernorm: bool = Field(True, description="rescale LayerNorms for the removed residual channels "
                                    "(needs calibration tokens; see compress/pruning/compensation.py)")

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> "PruneConfig":
        if self.params is not None and (self.mlp or self.width):
            raise ValueError("params is exclusive with mlp and width (with params the step chooses them)")
        return self

    @property
    def rounding(self) -> Rounding:
        """The multiple of each pruned width; a single int is the MLP's alone (its meaning before the mapping)."""
        r = self.round_to
        return Rounding(n_inner=r, n_embd=1) if isinstance(r, int) else Rounding(n_inner=r.n_inner, n_embd=r.n_embd)

    def prunes_nothing(self) -> bool:
        return self.layers == 0 and self.mlp == 0 and self.width == 0 and self.params in (None, 1)

    def check(self, state: PlanState) -> Check:
        """The target shape of the model this step receives, or why it cannot be reached."""
        if state.quantized is not None:
            return state, [Problem(f"prune needs a full-precision model: move it before {state.quantized.by}")]
        problems = []
        if state.factorized is not None:
            problems.append(Problem(f"prune slices dense projections; {state.factorized.by} made low-rank factors: "
                                    "prune before factorize"))
        if state.sparsity is not None and state.sparsity.pattern is not None:
            problems.append(Problem(f"prune removes input channels of the {state.sparsity.pattern} groups that "
                                    f"{state.sparsity.by} made: prune before sparsify"))
        if self.importance in CALIBRATED and not state.train_data:
            problems.append(Problem(f"{self.importance} calibrates on data.train: set data.train in the plan",
                                    "importance"))
        shape = state.shape
        if shape is None:
            return state, problems  # said once by the step that lost the shape
        bad = target_problems(shape, self)
        if not bad and self.params is not None and shape.vocab_size is None:
            why = f"{state.at}: the shape a params budget makes depends on the vocabulary size, known when it runs"
            return state.with_shape(None, unknown=why), problems + [Problem(why.split(": ", 1)[1], note=True)]
        if bad:
            return state.with_shape(None, unknown=f"{state.at} cannot prune the {shape} model"), \
                problems + [Problem(m) for m in bad]
        new = target_shape(shape, self)
        origin = Origin(f"{state.at} ({self._targets()})", fix=lambda dim, n: self.fix_for(shape, dim, n))
        return state.with_shape(new, {d: origin for d in _changed(shape, new)}), problems

    def _targets(self) -> str:
        given = self.model_dump(include={"layers", "mlp", "width", "params"}, exclude_defaults=True)
        return ", ".join(f"{k} {v}" for k, v in given.items()) or "nothing"

    def fix_for(self, shape: Shape, dim: str, divisor: int) -> str | None:
        """A setting of this step under which the pruned `dim` of `shape` is a multiple of divisor:
        round_to first (the same pruning otherwise), then, for n_embd, the width values nearest the given one."""
        fixes = []
        if getattr(self.rounding, dim) % divisor:
            fixed = self.model_copy(update={"round_to": self._round_to_with(shape, dim, divisor)})
            new = target_shape(shape, fixed)
            if getattr(new, dim) % divisor == 0:
                result = f" (n_embd {new.n_embd})" if dim == "n_embd" else ""
                fixes.append(f"round_to {_spell(fixed.round_to)}{result}")
        if dim == "n_embd" and self.params is None:
            now = removed(self.width, shape.n_head)
            ok = [k for k in range(shape.n_head) if (shape.n_head - k) * shape.head_dim % divisor == 0]
            near = sorted(ok, key=lambda k: (abs(k - now), k))[:2]
            if near:
                fixes.append("width " + " or ".join(f"{_width_for(k, shape.n_head)} ({shape.n_head - k} heads, n_embd "
                                                    f"{(shape.n_head - k) * shape.head_dim})" for k in sorted(near)))
        return ", or ".join(fixes) or None

    def _round_to_with(self, shape: Shape, dim: str, divisor: int) -> "int | RoundTo":
        """round_to with `dim` rounded to `divisor`, and the other pruned width too where it is not a multiple
        either (a group size or Edge-LLM's rule reads both): one setting that fixes both errors."""
        r, now = self.rounding, target_shape(shape, self)
        update = {d: divisor for d in ("n_inner", "n_embd")
                  if d == dim or (getattr(now, d) != getattr(shape, d) and getattr(now, d) % divisor)}
        if set(update) == {"n_inner"} and r.n_embd == 1:
            return divisor  # the single-int spelling still says it all
        return RoundTo(**{"n_inner": r.n_inner, "n_embd": r.n_embd, **update})


def _spell(round_to: "int | RoundTo") -> str:
    """round_to as a plan writes it: `128`, or `{n_embd: 128}` (the fields that differ from the defaults)."""
    if isinstance(round_to, int):
        return str(round_to)
    given = round_to.model_dump(exclude_defaults=True)
    return "{" + ", ".join(f"{k}: {v}" for k, v in given.items()) + "}"


def _width_for(k: int, n_head: int) -> str:
    """The shortest width value that removes exactly k of n_head heads."""
    for digits in range(1, 6):
        w = round(k / n_head, digits)
        if removed(w, n_head) == k and w < 1:
            return f"{w:g}"
    return f"{k / n_head:.6g}"


def _changed(before: Shape, after: Shape) -> list[str]:
    return [d for d in ("n_layer", "n_embd", "n_inner") if getattr(before, d) != getattr(after, d)]
