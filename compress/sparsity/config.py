"""SparsifyConfig: the `sparsify` step's settings and its plan-time check (the widths an N:M pattern
must divide, a model that is already quantized, calibration text)."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.plan_state import Check, PlanState, Problem, Sparsity
from compress.plan_types import Seed
from compress.sparsity.methods import METHODS
from compress.sparsity.pattern import PROJECTIONS, Target, parse_pattern
from compress.step_api import StepConfig

Method = Literal[tuple(METHODS)]  # magnitude, wanda, sparsegpt
Projection = Literal[PROJECTIONS]  # type: ignore[valid-type]
INPUT_WIDTH = {"attn.c_attn": "n_embd", "attn.c_proj": "n_embd", "mlp.c_fc": "n_embd", "mlp.c_proj": "n_inner"}


class SparsifyConfig(StepConfig):
    """Zero weights of the block projections (lm_head and wte never), unstructured or N:M.

        - sparsify: {method: wanda, pattern: "2:4"}         # 2 kept of every 4 inputs (TensorRT sparse)
        - sparsify: {method: sparsegpt, sparsity: 0.5}      # half of every row, OBS-updated
    """

    kind: ClassVar[str] = "sparsify"
    changes_weights: ClassVar[bool] = True

    method: Method = Field("wanda", description="how weights are chosen: magnitude, wanda (|w| x input norm), "
                                                "sparsegpt (OBS updates with the input Hessian)")
    sparsity: float | None = Field(None, description="fraction of each matrix zeroed (per output row), "
                                                     "0 < sparsity < 1; exclusive with pattern")
    pattern: str | None = Field(None, description="N:M: N weights kept of every M consecutive inputs "
                                                  "(2:4 for TensorRT's sparse tensor cores)")
    layers: tuple[Projection, ...] = Field(PROJECTIONS, min_length=1,  # type: ignore[valid-type]
                                           description="the block projections pruned")
    calib_tokens: int = Field(16384, ge=64, le=100_000_000, description="calibration tokens of data.train "
                                                                        "(wanda, sparsegpt)")
    seq_len: int | None = Field(None, ge=8, le=8192, description="calibration window; default min(256, n_positions)")
    damp: float = Field(0.01, gt=0, le=1, description="sparsegpt: Hessian damping, a fraction of mean(diag(H))")
    block_size: int = Field(128, ge=8, le=4096, description="sparsegpt: columns updated together")
    seed: Seed = Field(0, description="picks the calibration windows")

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"{v} must be above 0 and below 1 (the fraction of each matrix zeroed; "
                             f"{'1 zeroes every weight' if v >= 1 else '0 prunes nothing'})")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            n, m = parse_pattern(v)
            return f"{n}:{m}"
        return v

    @model_validator(mode="after")
    def _one_target(self) -> "SparsifyConfig":
        if (self.sparsity is None) == (self.pattern is None):
            raise ValueError("give exactly one of sparsity (e.g. 0.5) and pattern (e.g. '2:4')")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError("layers: a projection is named twice")
        return self

    @property
    def target(self) -> Target:
        return Target.of(self.sparsity, self.pattern)

    def slug(self) -> str:
        t = self.target
        return f"sparsify-{self.method}-" + (f"{t.n}of{t.m}" if t.m else f"{round(t.fraction * 100)}pct")

    def check(self, state: PlanState) -> Check:
        problems = []
        if state.quantized is not None:
            problems.append(Problem(f"sparsify needs a full-precision model: move it before {state.quantized.by}"))
        if state.factorized is not None:
            problems.append(Problem(f"sparsify prunes dense projections; {state.factorized.by} made low-rank factors: "
                                    "sparsify or factorize, not both"))
        if METHODS[self.method].calibrates and not state.train_data:
            problems.append(Problem(f"{self.method} calibrates on data.train: set data.train in the plan", "method"))
        t = self.target
        if t.m and state.shape is not None:
            for dim in sorted({INPUT_WIDTH[name] for name in self.layers}):
                width = getattr(state.shape, dim) if dim == "n_embd" else (state.shape.n_inner or 4 * state.shape.n_embd)
                if width % t.m:
                    names = ", ".join(n for n in self.layers if INPUT_WIDTH[n] == dim)
                    problems.append(Problem(f"{t.pattern}: groups of {t.m} do not divide {dim} {width} (input of "
                                            f"{names}) made by {state.origin(dim).by}", "pattern"))
        done = Sparsity(by=state.at, method=self.method, pattern=t.pattern, fraction=t.fraction,
                        layers=tuple(self.layers))
        return replace(state, sparsity=done), problems
