"""QuantizeConfig: the `quantize` step's settings and every check that can run before a model loads.

What each method accepts (bits, grid, options, calibration, export) comes from its registry entry
(compress.quantization.methods); this file compares no method names.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from compress.plan_state import Check, PlanState, Problem, Quantized
from compress.plan_types import Seed
from compress.quantization.outlier_check import needs_outlier_windows
from compress.quantization.methods import METHODS, exportable_methods, method, methods_reading, option_classes
from compress.quantization.registry import Grid, QuantMethod
from compress.step_api import StepConfig

Method = Literal[tuple(METHODS)]  # "rtn", "gptq", ... in table order
# The fields of every method's options (QuantMethod.options), mixed into QuantizeConfig.
OPTION_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for cls in option_classes() for f in cls.model_fields))


class _MethodChoice(StepConfig):
    # First in field order, so that every later field's validator sees the method.
    method: Method = "rtn"


class QuantizeConfig(*option_classes(), _MethodChoice):
    """Quantize the attention and MLP projections (and optionally the LM head) of a GPT-2."""

    kind: ClassVar[str] = "quantize"
    changes_weights: ClassVar[bool] = True

    bits: Literal[4, 8] | None = Field(
        None, description="default: the method's first (4 for rtn/gptq/awq/nf4/fp4, else 8)")
    group_size: Literal[32, 64, 128, "per-channel"] | None = Field(
        None, description="input channels per scale; default 128 at 4 bits, per-channel at 8 bits")
    sym: bool = Field(True, description="symmetric grid (zero point 2**(bits-1)); false: asymmetric")
    lm_head: Literal["keep", "int8", "int4"] = Field(
        "keep", description="quantize the LM head; a tied head quantizes the tied matrix (the token lookup "
                            "reads the same dequantized codes)")
    # calibration (methods with calibrates=True)
    calib_samples: int = Field(64, ge=1, le=4096, description="calibration windows from data.train")
    calib_seq_len: int = Field(256, ge=8, le=8192, description="tokens per window (capped at n_positions)")
    seed: Seed = 0

    @field_validator("method")
    @classmethod
    def _requirement_installed(cls, v: str) -> str:
        needs = method(v).requires
        if needs and not package_installed(needs[0]):
            raise ValueError(f"method {v}: {needs[0]} is not installed: pip install -e '.[{needs[1]}]'")
        return v

    @field_validator("bits")
    @classmethod
    def _bits_supported(cls, v: int, info: ValidationInfo) -> int:
        m = _method_of(info)
        if m and v not in m.bits:
            raise ValueError(f"method {m.name} supports bits {' or '.join(map(str, m.bits))}, not {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group_applies(cls, v: int | str, info: ValidationInfo) -> int | str:
        m = _method_of(info)
        if m and m.grid is Grid.PER_CHANNEL and v != "per-channel":
            raise ValueError(f"method {m.name} quantizes weights per channel; leave group_size unset")
        if m and m.grid is Grid.OWN:
            owner = f"{m.requires[0]}'" if m.requires else "its"
            raise ValueError(f"method {m.name} uses {owner} own blocks; leave group_size unset")
        return v

    @field_validator("sym")
    @classmethod
    def _sym_applies(cls, v: bool, info: ValidationInfo) -> bool:
        m = _method_of(info)
        if not v and m and not m.asymmetric:
            allowed = "/".join(x.name for x in METHODS.values() if x.asymmetric)
            raise ValueError(f"asymmetric weights are for {allowed}, not {m.name}")
        return v

    @field_validator(*OPTION_FIELDS)
    @classmethod
    def _option_applies(cls, v, info: ValidationInfo):
        """Reject an option the chosen method ignores (runs only when the user set the option)."""
        m = _method_of(info)
        if m and info.field_name not in m.options.model_fields:
            raise ValueError(f"{info.field_name} applies to method {' / '.join(methods_reading(info.field_name))} "
                             f"only, not {m.name}")
        return v

    @field_validator("lm_head")
    @classmethod
    def _lm_head_supported(cls, v: str, info: ValidationInfo) -> str:
        m = _method_of(info)
        if v != "keep" and m and not m.quantizes_head:
            allowed = [x.name for x in METHODS.values() if x.quantizes_head]
            raise ValueError(f"lm_head: {v} is supported with {', '.join(allowed[:-1])} and {allowed[-1]} only")
        return v

    # -- derived settings ----------------------------------------------------------------------------

    @property
    def quant_method(self) -> QuantMethod:
        """The registry entry of `method`."""
        return method(self.method)

    @property
    def weight_bits(self) -> int:
        return self.bits or self.quant_method.default_bits

    def group_for(self, bits: int) -> int | None:
        """Input channels per scale at `bits` (None: per-channel)."""
        if self.group_size == "per-channel":
            return None
        if self.group_size is not None:
            return self.group_size
        if self.quant_method.grid is Grid.OWN:
            return None  # the library's own blocks (bitsandbytes), not ours
        return 128 if bits == 4 else None

    @property
    def head_bits(self) -> int | None:
        return {"keep": None, "int8": 8, "int4": 4}[self.lm_head]

    def slug(self) -> str:
        g = self.group_for(self.weight_bits)
        grid = f"w{self.weight_bits}" + (f"g{g}" if g else "")
        return f"quantize-{self.method}-{grid}"

    # -- checks against the model it receives ------------------------------------------------------

    def check(self, state: PlanState) -> Check:
        problems = []
        if state.quantized is not None:
            problems.append(Problem(f"the model is already quantized by {state.quantized.by}"))
        if state.factorized is not None:
            problems += self.factors_problems(state)
        if self.quant_method.calibrates and not state.train_data:
            problems.append(Problem(f"{self.method} calibrates on data.train; set data.train in the plan", "method"))
        if needs_outlier_windows(self) and not state.train_data:
            problems.append(Problem(f"{self.method} measures activation outliers (and smooths) on data.train; set "
                                    "data.train in the plan, or allow_outliers: true without smooth", "method"))
        if state.shape is not None:
            problems += self.shape_problems(state)
        bits = self.weight_bits
        done = Quantized(by=state.at, method=self.method, bits=bits, group_size=self.group_for(bits), sym=self.sym,
                         exportable=self.quant_method.exportable)
        return replace(state, quantized=done), problems

    def shape_problems(self, state: PlanState) -> list[Problem]:
        """Group sizes that do not divide the widths the earlier steps made, with what would."""
        shape = state.shape
        group = self.group_for(self.weight_bits)
        checks = [("group_size", "", group, "n_embd", "attn.c_attn, attn.c_proj, mlp.c_fc"),
                  ("group_size", "", group, "n_inner", "mlp.c_proj")]
        if self.head_bits:
            checks.append(("lm_head", "its group_size ", self.group_for(self.head_bits), "n_embd", "lm_head"))
        out = []
        for key, lead, g, dim, names in checks:
            width = getattr(shape, dim)
            if not g or width % g == 0:
                continue
            origin = state.origin(dim)
            fits = [c for c in (128, 64, 32) if c != g and width % c == 0]
            hint = (f"group_size {' or '.join(map(str, fits))} {'divides' if len(fits) == 1 else 'divide'} it"
                    if fits else "group_size per-channel fits any width")
            fix = origin.fix(dim, g) if origin.fix else None
            out.append(Problem(f"{lead}{g} does not divide {dim} {width} (input of {names}) made by {origin.by}; "
                               f"{hint}" + (f", or {fix}" if fix else ""), key))
        return out

    def factor_problem(self, made_by: str, ranks: list[int] | None) -> str | None:
        """Why this config cannot quantize the factors `made_by` made (ranks: each factorized projection's,
        None when only known at run time), with the fix; None when it can."""
        if not self.quant_method.quantizes_factors:
            able = "/".join(m.name for m in METHODS.values() if m.quantizes_factors)
            return (f"{self.method} takes dense projections and {made_by} made low-rank factors: {able} quantize "
                    f"each factor (or quantize without factorize)")
        g = self.group_for(self.weight_bits)
        bad = sorted({r for r in ranks or () if g and r % g})
        if not bad:
            return None
        fits = [c for c in (128, 64, 32) if all(r % c == 0 for r in ranks)]
        return (f"group_size {g} does not divide rank {', '.join(map(str, bad[:4]))} of the factors {made_by} made "
                f"(the input width of each second factor): use group_size "
                f"{' or '.join(map(str, fits + ['per-channel']))}, or factorize with rank_multiple: {g}")

    def factors_problems(self, state: PlanState) -> list[Problem]:
        done = state.factorized
        ranks = None if done.rank is None else [done.rank]
        problem = self.factor_problem(done.by, ranks)
        if problem:
            return [Problem(problem, "method" if not self.quant_method.quantizes_factors else "group_size")]
        g = self.group_for(self.weight_bits)
        if ranks is None and g and done.rank_multiple % g:
            return [Problem(f"{done.by} chooses its ranks when it runs: group_size {self.group_for(self.weight_bits)} "
                            f"must divide each (checked then; factorize with rank_multiple: {g} makes sure)",
                            note=True)]
        return []

    def bad_groups(self, widths: dict[str, int]) -> dict[tuple[int, int], list[str]]:
        """(group, width) -> the layers whose input width the group does not divide."""
        checks = [(n, w, self.group_for(self.weight_bits)) for n, w in widths.items() if n != "lm_head"]
        if self.head_bits:
            checks.append(("lm_head", widths["lm_head"], self.group_for(self.head_bits)))
        bad: dict[tuple[int, int], list[str]] = {}
        for name, width, group in checks:
            if group and width % group:
                bad.setdefault((group, width), []).append(name)
        return bad

    def width_problems(self, widths: dict[str, int]) -> list[str]:
        """Group sizes that do not divide a layer's input width (widths from layer_widths()), checked
        again when the model is loaded (the plan may not have known its shape)."""
        return [f"group_size {g} does not divide the input width {w} of {', '.join(names)}"
                for (g, w), names in self.bad_groups(widths).items()]


def package_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _method_of(info: ValidationInfo) -> QuantMethod | None:
    """The entry of the method validated before this field (None when the method itself was invalid)."""
    name = info.data.get("method")
    return method(name) if name else None


def layer_widths(n_embd: int, n_inner: int | None) -> dict[str, int]:
    """in_features of each block projection and of the LM head of a GPT-2."""
    inner = n_inner or 4 * n_embd
    return {"attn.c_attn": n_embd, "attn.c_proj": n_embd, "mlp.c_fc": n_embd, "mlp.c_proj": inner,
            "lm_head": n_embd}
