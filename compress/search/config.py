"""The `search:` section of a plan: what to search, for which device, under which budget.

    search:
      target: orin-nano                 # a catalogued device (roofline projection) or host
      budget: {max_mb: 12, max_ppl_ratio: 1.10, min_tokens_per_s: 400}   # any subset
      objective: ppl                    # minimised inside the budget: ppl, size or latency
      space: default                    # or per step kind (SearchSpace below)
      max_trials: 8                     # full evaluations at most

Validated with the plan (extra keys forbidden, every problem with its key path); `plan_problems`
adds what needs the whole plan (a search plan has no `steps:`, its space's quantize methods and
group sizes must exist, a factorize space needs a method that quantizes factors). No torch here: plan
errors come back before any model loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from compress.plan_types import Strict
from compress.pruning.config import Criterion
from compress.sparsity.pattern import PROJECTIONS
from evalsuite.hardware import KNOWN_TARGETS

if TYPE_CHECKING:
    from compress.plan import Plan

MB = 1_000_000  # max_mb is decimal megabytes, as the reports print sizes
Fraction = Annotated[float, Field(ge=0, lt=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Projection = Literal[PROJECTIONS]  # type: ignore[valid-type]


class Budget(Strict):
    """Limits every reported winner meets (measured values; the candidates are ranked by predicted ones)."""

    max_mb: float | None = Field(None, gt=0, le=1e6, description="weight bytes of the shipped artifact, in MB (1e6)")
    max_ppl_ratio: float | None = Field(None, ge=1.0, le=1e6, description="perplexity / the base model's")
    min_tokens_per_s: float | None = Field(None, gt=0, le=1e9,
                                           description="decode tokens/s on the target (roofline projection; "
                                                       "on host the measured value when latency is measured)")


class PruneSpace(Strict):
    """Shapes to try: every combination of these (0 = keep), kept only where the export's shape rules hold."""

    width: list[Fraction] = Field(default_factory=lambda: [0.0], min_length=1, max_length=16)
    mlp: list[Fraction] = Field(default_factory=lambda: [0.0], min_length=1, max_length=16)
    layers: list[Annotated[int, Field(ge=0, le=1000)]] = Field(default_factory=lambda: [0], min_length=1,
                                                              max_length=16)
    importance: Criterion = "activation"


class DistillSpace(Strict):
    """How a pruned shape is healed before quantization (one distillation per shape, shared by its variants)."""

    tokens: int = Field(131_072, ge=0, le=10**10, description="distillation tokens; 0: no healing")

    @field_validator("tokens")
    @classmethod
    def _heals_or_not(cls, v: int) -> int:
        if 0 < v < 1000:  # the distill step's own minimum: refused here, not at the first trial
            raise ValueError(f"{v} distillation tokens: give 0 (no healing) or at least 1000")
        return v
    seq_len: int = Field(256, ge=8, le=8192)
    batch_tokens: int = Field(2048, ge=8, le=10**7)
    lr: float = Field(5.0e-4, gt=0, le=1)
    eval_tokens: int = Field(0, ge=0, le=10**8, description="tail of data.train held out to watch the "
                                                           "distillation (the distill step's eval_tokens; 0: none)")
    eval_every: int | None = Field(None, ge=1, le=10**7, description="optimizer steps between those evals")


class QuantizeSpace(Strict):
    """Precisions to try. Uniform variants: every (method, bits, group size, head); mixed: per-module bits
    chosen by measured sensitivity per byte under max_mb (needs quantize `overrides`)."""

    methods: list[str] = Field(default_factory=lambda: ["gptq"], min_length=1, max_length=8,
                               description="quantization methods (compress.quantization.methods)")
    bits: list[Literal[4, 8]] = Field(default_factory=lambda: [4, 8], min_length=1, max_length=2)
    group_sizes: list[Literal[32, 64, 128]] = Field(default_factory=lambda: [128], min_length=1, max_length=3)
    lm_head: list[Literal["keep", "int8", "int4"]] = Field(default_factory=lambda: ["int4", "int8"], min_length=1,
                                                           max_length=3)
    mixed: bool = Field(True, description="also per-module precision (quantize overrides) under max_mb")
    calib_samples: int = Field(32, ge=1, le=4096)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        # the method table imports the quantizers (torch): read only when a plan searches
        from compress.quantization.methods import METHODS
        unknown = [m for m in v if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {', '.join(unknown)}; known: {', '.join(METHODS)}")
        return v


class FactorizeSpace(Strict):
    """Low-rank budgets to try (the factorize step, compress/lowrank): each one after the prune, on every
    shape whose projections it fits, with rank_multiple the space's largest group size (so every group
    divides every rank); its candidates are uniform-precision (no overrides after factorize)."""

    method: str = Field("whiten", description="factorization method (compress.lowrank.methods)")
    energy: list[OpenFraction] = Field(default_factory=list, max_length=8,
                                       description="per matrix, the rank keeping this fraction of sum s^2")
    params: list[OpenFraction] = Field(default_factory=list, max_length=8,
                                       description="keep this fraction of the chosen projections' weights")
    layers: list[Projection] | None = Field(None, min_length=1, max_length=4,  # type: ignore[valid-type]
                                            description="the projections factorized; default the step's (all four)")
    calib_tokens: int = Field(16384, ge=64, le=100_000_000, description="calibration tokens of data.train (whiten)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from compress.lowrank.methods import METHODS  # the table imports torch: read only when a plan factorizes
        if v not in METHODS:
            raise ValueError(f"unknown method {v}; known: {', '.join(METHODS)}")
        return v

    def settings(self, rank_multiple: int) -> dict[str, dict[str, Any]]:
        """{key ("whiten-e0.9"): the factorize step's config as a plan writes it}, one per budget."""
        budgets = [("energy", "e", v) for v in self.energy] + [("params", "p", v) for v in self.params]
        extra = {"layers": list(self.layers)} if self.layers else {}
        return {f"{self.method}-{tag}{v:g}": {"method": self.method, key: v, "rank_multiple": rank_multiple,
                                              "calib_tokens": self.calib_tokens, **extra}
                for key, tag, v in budgets}


class SearchSpace(Strict):
    prune: PruneSpace = Field(default_factory=PruneSpace)
    distill: DistillSpace = Field(default_factory=DistillSpace)
    quantize: QuantizeSpace = Field(default_factory=QuantizeSpace)
    factorize: FactorizeSpace | None = Field(None, description="low-rank budgets to try; absent: no factorize")
    export: Literal["onnx", "none"] = Field("onnx", description="the last step of every trial")

    def factorize_settings(self) -> dict[str, dict[str, Any]]:
        """{key: factorize step config} of every low-rank budget of the space (empty: none), each rank a
        multiple of the largest group size (the groups are powers of two: every one divides it)."""
        if self.factorize is None:
            return {}
        return self.factorize.settings(max(self.quantize.group_sizes))


class ProfileSettings(Strict):
    """Stage 1's calibration: windows of data.train on which every sensitivity is measured."""

    windows: int = Field(8, ge=1, le=1024, description="windows the KL is measured on")
    seq_len: int = Field(128, ge=8, le=8192)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    proxy: Literal["gptq", "rtn"] = Field("gptq", description="how each matrix is quantized alone: GPTQ on the "
                                                              "float model's input Hessians, or round-to-nearest")
    hessian_windows: int = Field(32, ge=1, le=4096, description="windows of data.train for GPTQ's Hessians")
    baseline: Literal["cheapest", "float"] = Field(
        "cheapest", description="what the other matrices are while one is measured: at their cheapest precision "
                                "(the knapsack's start: errors that compound are counted) or float")


def default_space() -> SearchSpace:
    """`space: default` spelled out: the unpruned shape plus one head-pruned shape, int4/int8, mixed."""
    return SearchSpace(prune=PruneSpace(width=[0.0, 0.33]))


class SearchConfig(Strict):
    target: Literal[KNOWN_TARGETS] = "host"  # type: ignore[valid-type]
    budget: Budget = Field(default_factory=Budget)
    objective: Literal["ppl", "size", "latency"] = "ppl"
    space: SearchSpace = Field(default_factory=lambda: default_space(),
                               description="`default` (default_space()) or per step kind")
    max_trials: int = Field(8, ge=1, le=256)
    context: int = Field(192, ge=1, le=65536, description="tokens in the KV cache for the speed projection")
    profile: ProfileSettings = Field(default_factory=ProfileSettings)

    @model_validator(mode="after")
    def _objective_has_room(self) -> "SearchConfig":
        if self.objective == "size" and self.budget.max_ppl_ratio is None:
            raise ValueError("objective size needs budget.max_ppl_ratio (else the smallest model always wins)")
        if self.objective == "latency" and self.budget.max_ppl_ratio is None:
            raise ValueError("objective latency needs budget.max_ppl_ratio (else the fastest model always wins)")
        return self

    @field_validator("space", mode="before")
    @classmethod
    def _spell_out_default(cls, v):
        # `space: default` is read as the space it names: a typo inside a given space is then reported
        # at its own key, not beside a "should be 'default'" from the other half of a union
        return default_space() if v == "default" else v

    @property
    def search_space(self) -> SearchSpace:
        return self.space


def _reason(e: ValueError) -> str:
    """A step config's refusal in one line (a pydantic error's last line is its documentation link)."""
    if isinstance(e, ValidationError):
        return "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
    return str(e).splitlines()[-1].strip()


def plan_problems(plan: "Plan") -> list[tuple[tuple, str]]:
    """(key path, message) of a search plan's problems that need more than the search section."""
    search = plan.search
    if search is None:
        return []
    out = []
    if plan.steps:
        out.append((("steps",), "a plan with search: has no steps (the search writes them; best.plan.yaml "
                                "is the winner as an ordinary plan)"))
    if plan.data.train is None:
        out.append((("data", "train"), "search calibrates and distils on data.train; set it"))
    space = search.search_space
    from compress.quantization.config import QuantizeConfig  # the step's own validation of each variant

    for i, m in enumerate(space.quantize.methods):
        for bits in space.quantize.bits:
            try:
                QuantizeConfig(method=m, bits=bits, group_size=space.quantize.group_sizes[0])
            except ValueError as e:
                out.append((("search", "space", "quantize", "methods", i),
                            f"{m} at {bits} bits: {_reason(e)}"))
    if space.factorize_settings():
        from compress.lowrank.config import FactorizeConfig  # the step's own validation of each setting
        from compress.quantization.methods import METHODS

        for key, setting in space.factorize_settings().items():
            try:
                FactorizeConfig(**setting)
            except ValueError as e:
                out.append((("search", "space", "factorize"), f"{key}: {_reason(e)}"))

        if not any(METHODS[m].quantizes_factors for m in space.quantize.methods):
            able = ", ".join(m for m, qm in METHODS.items() if qm.quantizes_factors)
            out.append((("search", "space", "factorize"), f"no method of search.space.quantize.methods quantizes "
                                                          f"low-rank factors; add one of {able}, or drop factorize"))
    if search.budget == Budget() and search.objective == "ppl":
        out.append((("search", "budget"), "give at least one of max_mb, max_ppl_ratio, min_tokens_per_s "
                                          "(with no budget the unquantized model wins)"))
    return out
