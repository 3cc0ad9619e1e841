"""FactorizeConfig: the `factorize` step's settings and its plan-time check (ranks against the
break-even rank m*n/(m+n) of every chosen projection, calibration text, what the model already is)."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.lowrank.methods import METHODS
from compress.lowrank.ranks import break_even, max_rank
from compress.plan_state import Check, Factorized, PlanState, Problem
from compress.plan_types import Seed
from compress.sparsity.pattern import PROJECTIONS
from compress.step_api import StepConfig

Method = Literal[tuple(METHODS)]  # svd, whiten
Projection = Literal[PROJECTIONS]  # type: ignore[valid-type]


def projection_shapes(n_embd: int, n_inner: int | None) -> dict[str, tuple[int, int]]:
    """[in, out] of each block projection of a GPT-2."""
    inner = n_inner or 4 * n_embd
    return {"attn.c_attn": (n_embd, 3 * n_embd), "attn.c_proj": (n_embd, n_embd),
            "mlp.c_fc": (n_embd, inner), "mlp.c_proj": (inner, n_embd)}


class FactorizeConfig(StepConfig):
    """Replace each chosen projection by two matmuls of rank r (x @ A [in, r] @ B [r, out] + bias).

        - factorize: {method: whiten, params: 0.8}   # keep 80% of the chosen projections' weights
        - factorize: {method: svd, rank: 24, layers: [mlp.c_fc, mlp.c_proj]}
        - factorize: {method: whiten, energy: 0.95}  # per matrix, the rank keeping 95% of the spectrum
    """

    kind: ClassVar[str] = "factorize"
    changes_weights: ClassVar[bool] = True

    method: Method = Field("whiten", description="svd (plain truncated SVD) or whiten (SVD of W times the "
                                                 "Cholesky factor of the input covariance, SVD-LLM)")
    rank: int | None = Field(None, description="one rank for every chosen projection (below m*n/(m+n) of each)")
    params: float | None = Field(None, description="keep this fraction of the chosen projections' weights; "
                                                   "ranks chosen per matrix by normalized spectrum energy")
    energy: float | None = Field(None, description="per matrix, the smallest rank keeping this fraction of "
                                                   "sum s^2 (capped below break-even)")
    rank_multiple: int = Field(1, ge=1, le=4096, description="every rank a multiple of this (params, energy; rank "
                                                             "itself must be one): a quantize group size after")
    layers: tuple[Projection, ...] = Field(PROJECTIONS, min_length=1,  # type: ignore[valid-type]
                                           description="the block projections factorized")
    calib_tokens: int = Field(16384, ge=64, le=100_000_000, description="calibration tokens of data.train (whiten)")
    seq_len: int | None = Field(None, ge=8, le=8192, description="calibration window; default min(256, n_positions)")
    damp: float = Field(0.01, gt=0, le=1, description="whiten: covariance damping, a fraction of its mean diagonal")
    seed: Seed = Field(0, description="picks the calibration windows")

    @field_validator("rank")
    @classmethod
    def _rank(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"rank {v} keeps nothing: at least 1 (and below m*n/(m+n) of every chosen matrix)")
        return v

    @field_validator("params", "energy")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"{v} must be above 0 and below 1 (at 1 factorizing keeps as many weights as the "
                             "dense matrices and only costs time)")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> "FactorizeConfig":
        given = [k for k in ("rank", "params", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of rank, params, energy (got {', '.join(given) or 'none'})")
        if self.rank is not None and self.rank % self.rank_multiple:
            raise ValueError(f"rank {self.rank} is not a multiple of rank_multiple {self.rank_multiple}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError("layers: a projection is named twice")
        return self

    def slug(self) -> str:
        budget = (f"r{self.rank}" if self.rank is not None else
                  f"p{round(self.params * 100)}" if self.params is not None else f"e{round(self.energy * 100)}")
        return f"factorize-{self.method}-{budget}"

    def rank_problem(self, shapes: dict[str, tuple[int, int]]) -> str | None:
        """One line naming the projections at which `rank` is not below break-even, or None."""
        least = self.rank or self.rank_multiple  # a budget still gives every matrix rank_multiple
        bad = [(name, *shapes[name]) for name in self.layers if least > max_rank(*shapes[name])]
        if not bad:
            return None
        worst = ", ".join(f"{name} [{m}, {n}]: {m}*{n}/({m}+{n}) = {break_even(m, n):.1f}" for name, m, n in bad)
        top = min(max_rank(m, n) for _, m, n in bad)
        what = f"rank {self.rank}" if self.rank else f"rank_multiple {self.rank_multiple}"
        return (f"{what} is not below the break-even rank of {worst}: two factors would hold as many "
                f"weights (and multiply-adds) as the matrix; use {what.split()[0]} {top} or less, or drop those layers")

    def check(self, state: PlanState) -> Check:
        problems = []
        if state.quantized is not None:
            problems.append(Problem(f"factorize needs a full-precision model: move it before {state.quantized.by}"))
        if state.factorized is not None:
            problems.append(Problem(f"the model is already factorized by {state.factorized.by}"))
        if METHODS[self.method].calibrates and not state.train_data:
            problems.append(Problem(f"{self.method} calibrates on data.train: set data.train in the plan", "method"))
        if state.shape is not None:
            bad = self.rank_problem(projection_shapes(state.shape.n_embd, state.shape.n_inner))
            if bad:
                problems.append(Problem(bad, "rank" if self.rank else "rank_multiple"))
        if state.sparsity is not None:
            problems.append(Problem(f"factorize replaces the weights that {state.sparsity.by} sparsified: the zeros "
                                    "are lost", note=True))
        done = Factorized(by=state.at, method=self.method, layers=tuple(self.layers), rank=self.rank,
                          rank_multiple=self.rank_multiple)
        return replace(state, factorized=done, sparsity=None), problems
