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
from compress.quantization.methods import METHODS, exportable_methods, method, methods_reading, option_classes
from compress.quantization.options import needs_outlier_windows
from compress.quantization.module_precision import (FLOAT_BITS, HEAD, MAX_LAYERS, ModulePrecision, deciding_pattern,
                                                    local_name, matches, module_names, relative_name,
                                                    unmatched_problem)
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
    group_size: Literal[16, 32, 64, 128, 256, "per-channel"] | None = Field(
        None, description="input channels per scale; default 128 at 4 bits, per-channel at 8 bits (ort-int4/8: "
                          "the MatMulNBits block, default 128; 16 and 256 only there)")
    sym: bool = Field(True, description="symmetric grid (zero point 2**(bits-1)); false: asymmetric")
    lm_head: Literal["keep", "int8", "int4"] = Field(
        "keep", description="quantize the LM head; a tied head quantizes the tied matrix (the token lookup "
                            "reads the same dequantized codes)")
    overrides: dict[str, ModulePrecision] | None = Field(
        None, description="precision per module: {glob of h.<i>.attn.c_attn|attn.c_proj|mlp.c_fc|mlp.c_proj or "
                          "lm_head: {bits: 4|8|16, group_size}}; later keys win; bits 16 keeps the module float "
                          "(module_precision.py)")
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
        blocks = m is not None and m.grid is Grid.BLOCKS  # MatMulNBits: a power-of-two block, never per channel
        if m and (v == "per-channel" if blocks else v in (16, 256)):
            allowed = "16, 32, 64, 128 or 256" if blocks else "32, 64, 128 or per-channel"
            raise ValueError(f"method {m.name} takes group_size {allowed}, not {v}")
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

    @field_validator("overrides")
    @classmethod
    def _overrides_apply(cls, v: dict[str, ModulePrecision] | None,
                         info: ValidationInfo) -> dict[str, ModulePrecision] | None:
        m = _method_of(info)
        if not v or m is None:
            return v
        if not m.per_module:
            allowed = "/".join(x.name for x in METHODS.values() if x.per_module)
            raise ValueError(f"per-module precision is for {allowed}; {m.name} quantizes every module alike")
        names = module_names(MAX_LAYERS)
        for pattern, p in v.items():
            if not matches(pattern, names):
                raise ValueError(unmatched_problem(pattern, names, "a GPT-2"))
            if p.bits != FLOAT_BITS and p.bits not in m.bits:
                raise ValueError(f"{pattern!r}: method {m.name} supports bits {' or '.join(map(str, m.bits))} "
                                 f"(or {FLOAT_BITS}: keep float), not {p.bits}")
            if p.bits == FLOAT_BITS and p.group_size is not None:
                raise ValueError(f"{pattern!r}: bits {FLOAT_BITS} keeps the module float; remove its group_size")
            if matches(pattern, [HEAD]) and info.data.get("lm_head", "keep") != "keep":
                raise ValueError(f"{pattern!r} sets the head's precision and so does lm_head: "
                                 f"{info.data['lm_head']}; set it in one place")
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
        return 128 if bits == 4 or self.quant_method.grid is Grid.BLOCKS else None

    @property
    def head_bits(self) -> int | None:
        return {"keep": None, "int8": 8, "int4": 4}[self.lm_head]

    def precision_of(self, name: str) -> tuple[int, int | None]:
        """(bits, group_size) of one module ('h.3.mlp.c_fc', 'transformer.h.3.mlp.c_fc' or 'lm_head'):
        bits 16 = float, group None = per channel. Pure: needs no model."""
        name = relative_name(name)
        pattern = deciding_pattern(self.overrides, name)
        if pattern is None:
            bits = (self.head_bits if name == HEAD else self.weight_bits) or FLOAT_BITS
        else:
            p = self.overrides[pattern]
            bits = p.bits
            if bits != FLOAT_BITS and p.group_size is not None:
                return bits, None if p.group_size == "per-channel" else p.group_size
        return (bits, None) if bits == FLOAT_BITS else (bits, self.group_for(bits))

    def module_precisions(self, n_layer: int) -> dict[str, tuple[int, int | None]]:
        """precision_of every module of an n_layer GPT-2, by block-relative name."""
        return {n: self.precision_of(n) for n in module_names(n_layer)}

    def override_problems(self, n_layer: int, widths: dict[str, int]) -> list[str]:
        """Overrides that do not fit a model of n_layer blocks and these input widths (layer_widths()):
        patterns that match no module, group sizes that do not divide a matched module's width."""
        names = module_names(n_layer)
        out = [unmatched_problem(p, names, f"a {n_layer}-block model") for p in self.overrides or {}
               if not matches(p, names)]
        bad: dict[tuple[str, int], list[str]] = {}  # (pattern, group) -> "module (width)"
        for name in names:
            pattern = deciding_pattern(self.overrides, name)
            group = self.precision_of(name)[1]
            width = widths[local_name(name)]
            if pattern is not None and group and width % group:
                bad.setdefault((pattern, group), []).append(f"{name} ({width})")
        out += [f"{p!r}: group_size {g} does not divide the input width of {', '.join(ns[:3])}"
                f"{' ...' if len(ns) > 3 else ''}; group_size per-channel fits any width"
                for (p, g), ns in bad.items()]
        return out

    def _uses_default(self, local: str, n_layer: int | None) -> bool:
        """Whether some module `local` ('mlp.c_proj', 'lm_head') takes the step-wide precision (no override
        decides it); unknown depth: only patterns that name no layer count."""
        names = [HEAD] if local == HEAD else [f"h.{i}.{local}" for i in range(n_layer or MAX_LAYERS)]
        return any(deciding_pattern(self.overrides, n) is None for n in names)

    def slug(self) -> str:
        g = self.group_for(self.weight_bits)
        grid = f"w{self.weight_bits}" + (f"g{g}" if g else "")
        return f"quantize-{self.method}-{grid}" + ("-mixed" if self.overrides else "")

    def __hash__(self) -> int:
        """Hashable with `overrides` (a dict): searches keep configs in sets."""
        return hash(self.model_dump_json())

    def content_hash(self, prev, inputs) -> str:
        """Without `overrides` when unset, so that steps planned before it existed keep their hashes."""
        from compress.hashing import digest

        dump = self.model_dump(mode="json", exclude=None if self.overrides else {"overrides"})
        return digest(prev, self.kind, dump, inputs.key())

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
                         exportable=self.quant_method.exportable, grids=self.grids(state.shape))
        return replace(state, quantized=done), problems

    def shape_problems(self, state: PlanState) -> list[Problem]:
        """Group sizes that do not divide the widths the earlier steps made, with what would."""
        shape = state.shape
        group = self.group_for(self.weight_bits)
        if self.quant_method.grid is Grid.BLOCKS:
            return []  # MatMulNBits pads a last partial block
        checks = [("group_size", "", group, "n_embd", "attn.c_attn, attn.c_proj, mlp.c_fc"),
                  ("group_size", "", group, "n_inner", "mlp.c_proj")]
        # the step-wide group only where some module takes it (overrides may decide them all)
        checks = [c for c in checks if any(self._uses_default(n, shape.n_layer) for n in c[4].split(", "))]
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
        widths = layer_widths(shape.n_embd, shape.n_inner)
        return out + [Problem(p, "overrides") for p in self.override_problems(shape.n_layer, widths)]

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
        if self.overrides:
            return [Problem(f"overrides name dense projections and {done.by} made low-rank factors: quantize the "
                            "factors at one precision (leave overrides unset)", "overrides")]
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

    def grids(self, shape=None) -> tuple[tuple[int, int | None], ...]:
        """(bits, group_size) of each grid the modules use, when overrides are set (16: float); () without.
        Unknown shape: every grid a module may take."""
        if not self.overrides:
            return ()
        if shape is not None:
            return tuple(dict.fromkeys(self.module_precisions(shape.n_layer).values()))
        default = [(self.weight_bits, self.group_for(self.weight_bits)), (self.head_bits or FLOAT_BITS, None)]
        given = [self.precision_of(matches(p, module_names(MAX_LAYERS))[0]) for p in self.overrides]
        return tuple(dict.fromkeys(default + given))

    def bad_groups(self, widths: dict[str, int], n_layer: int | None = None) -> dict[tuple[int, int], list[str]]:
        """(group, width) -> the layers whose input width the step-wide group does not divide (layers that
        overrides decide in every block are checked by override_problems)."""
        if self.quant_method.grid is Grid.BLOCKS:
            return {}  # MatMulNBits pads a last partial block
        checks = [(n, w, self.group_for(self.weight_bits)) for n, w in widths.items()
                  if n != "lm_head" and self._uses_default(n, n_layer)]
        if self.head_bits:
            checks.append(("lm_head", widths["lm_head"], self.group_for(self.head_bits)))
        bad: dict[tuple[int, int], list[str]] = {}
        for name, width, group in checks:
            if group and width % group:
                bad.setdefault((group, width), []).append(name)
        return bad

    def width_problems(self, widths: dict[str, int], n_layer: int | None = None) -> list[str]:
        """Group sizes that do not divide a layer's input width (widths from layer_widths()), checked
        again when the model is loaded (the plan may not have known its shape)."""
        return [f"group_size {g} does not divide the input width {w} of {', '.join(names)}"
                for (g, w), names in self.bad_groups(widths, n_layer).items()]


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
