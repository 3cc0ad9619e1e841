"""QuantizeConfig: the `quantize` step's settings and every check that can run before a model loads."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from compress.steps import StepConfig

if TYPE_CHECKING:
    from compress.plan import Plan

Method = Literal["rtn", "gptq", "smoothquant", "bnb-int8", "bnb-nf4", "bnb-fp4", "dynamic-int8"]

# Weight bits each method can produce; the first is its default.
METHOD_BITS: dict[str, tuple[int, ...]] = {
    "rtn": (4, 8), "gptq": (4, 8), "smoothquant": (8,), "bnb-int8": (8,), "bnb-nf4": (4,),
    "bnb-fp4": (4,), "dynamic-int8": (8,),
}
# Methods whose result has a MatMulNBits / QDQ form (compressed-tensors layout, see storage.py).
EXPORTABLE = ("rtn", "gptq", "smoothquant")
CALIBRATED = ("gptq", "smoothquant")
BNB_HINT = "bitsandbytes is not installed: pip install -e '.[bnb]'"


class QuantizeConfig(StepConfig):
    """Quantize the attention and MLP projections (and optionally the LM head) of a GPT-2."""

    kind: ClassVar[str] = "quantize"

    method: Method = "rtn"
    bits: Literal[4, 8] | None = Field(None, description="default: 4 for rtn/gptq/nf4/fp4, else 8")
    group_size: Literal[32, 64, 128, "per-channel"] | None = Field(
        None, description="input channels per scale; default 128 at 4 bits, per-channel at 8 bits")
    sym: bool = Field(True, description="symmetric grid (zero point 2**(bits-1)); false: asymmetric")
    lm_head: Literal["keep", "int8", "int4"] = Field(
        "keep", description="quantize the LM head; a tied head quantizes the tied matrix (the token lookup "
                            "reads the same dequantized codes)")
    # gptq
    damp: float = Field(0.01, gt=0, le=1, description="gptq: damping, a fraction of mean(diag(H))")
    act_order: bool = Field(False, description="gptq: quantize columns by decreasing Hessian diagonal")
    # smoothquant
    alpha: float = Field(0.5, ge=0, le=1, description="smoothquant: migration strength")
    # bnb-int8
    threshold: float = Field(6.0, ge=0, le=1000, description="bnb-int8: outlier threshold (LLM.int8)")
    # activation outliers (outlier_guard.py, smooth_dynamic.py)
    smooth: float | None = Field(
        None, ge=0, le=1, description="dynamic-int8: SmoothQuant alpha; fold per-channel scales from calibration "
                                      "into the LayerNorms before quantizing (needs data.train)")
    allow_outliers: bool = Field(
        False, description="dynamic-int8 / smoothquant: run even when calibration finds an input quantized per "
                           "tensor with max/median above outlier_guard.OUTLIER_LIMIT")
    # calibration (gptq, smoothquant)
    calib_samples: int = Field(64, ge=1, le=4096, description="calibration windows from data.train")
    calib_seq_len: int = Field(256, ge=8, le=8192, description="tokens per window (capped at n_positions)")
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _bnb_installed(cls, v: str) -> str:
        if v.startswith("bnb-") and not bnb_installed():
            raise ValueError(f"method {v}: {BNB_HINT}")
        return v

    @field_validator("bits")
    @classmethod
    def _bits_supported(cls, v: int, info: ValidationInfo) -> int:
        method = info.data.get("method")
        if method and v not in METHOD_BITS[method]:
            raise ValueError(f"method {method} supports bits {' or '.join(map(str, METHOD_BITS[method]))}, "
                             f"not {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group_applies(cls, v: int | str, info: ValidationInfo) -> int | str:
        method = info.data.get("method")
        if method in ("smoothquant", "dynamic-int8") and v != "per-channel":
            raise ValueError(f"method {method} quantizes weights per channel; leave group_size unset")
        if method and method.startswith("bnb-"):
            raise ValueError(f"method {method} uses bitsandbytes' own blocks; leave group_size unset")
        return v

    @field_validator("sym")
    @classmethod
    def _sym_applies(cls, v: bool, info: ValidationInfo) -> bool:
        if not v and info.data.get("method") not in ("rtn", "gptq"):
            raise ValueError(f"asymmetric weights are for rtn/gptq, not {info.data.get('method')}")
        return v

    @field_validator("damp", "act_order")
    @classmethod
    def _gptq_only(cls, v, info: ValidationInfo):
        return _only_for(v, info, ("gptq",))

    @field_validator("alpha")
    @classmethod
    def _smoothquant_only(cls, v, info: ValidationInfo):
        return _only_for(v, info, ("smoothquant",))

    @field_validator("smooth", "allow_outliers")
    @classmethod
    def _outlier_options(cls, v, info: ValidationInfo):
        return _only_for(v, info, {"smooth": ("dynamic-int8",), "allow_outliers": ("dynamic-int8", "smoothquant")}
                         [info.field_name])

    @field_validator("threshold")
    @classmethod
    def _bnb_int8_only(cls, v, info: ValidationInfo):
        return _only_for(v, info, ("bnb-int8",))

    @field_validator("lm_head")
    @classmethod
    def _lm_head_supported(cls, v: str, info: ValidationInfo) -> str:
        if v != "keep" and info.data.get("method") not in ("rtn", "gptq", "smoothquant"):
            raise ValueError(f"lm_head: {v} is supported with rtn, gptq and smoothquant only")
        return v

    # -- derived settings ----------------------------------------------------------------------------

    @property
    def weight_bits(self) -> int:
        return self.bits or METHOD_BITS[self.method][0]

    def group_for(self, bits: int) -> int | None:
        """Input channels per scale at `bits` (None: per-channel)."""
        if self.group_size == "per-channel":
            return None
        if self.group_size is not None:
            return self.group_size
        if self.method.startswith("bnb-"):
            return None  # bitsandbytes' own blocks, not ours
        return 128 if bits == 4 else None

    @property
    def head_bits(self) -> int | None:
        return {"keep": None, "int8": 8, "int4": 4}[self.lm_head]

    def slug(self) -> str:
        g = self.group_for(self.weight_bits)
        grid = f"w{self.weight_bits}" + (f"g{g}" if g else "")
        return f"quantize-{self.method}-{grid}"

    # -- checks against the rest of the plan ---------------------------------------------------------

    def plan_problems(self, plan: "Plan", index: int) -> list[str]:
        problems = []
        earlier = [s.kind for s in plan.steps[:index]]
        if "quantize" in earlier:
            problems.append(f"the model is already quantized by steps[{earlier.index('quantize')}]")
        if self.method not in EXPORTABLE and any(s.kind == "export" for s in plan.steps[index + 1:]):
            problems.append(f"method {self.method} cannot be exported to ONNX; use rtn/gptq/smoothquant")
        if self.method in CALIBRATED and plan.data.train is None:
            problems.append(f"method {self.method} calibrates on data.train; set data.train in the plan")
        if self.method == "dynamic-int8" and plan.data.train is None and (
                self.smooth is not None or not self.allow_outliers):
            problems.append("method dynamic-int8 measures activation outliers (and smooths) on data.train; set "
                            "data.train in the plan, or allow_outliers: true without smooth")
        from compress.pruning.config import input_shape

        shape = input_shape(plan, index)  # through earlier prune steps; None after a distil or for a hub id
        if shape is not None:
            problems += self.width_problems(layer_widths(shape.n_embd, shape.n_inner))
        return problems

    def width_problems(self, widths: dict[str, int]) -> list[str]:
        """Group sizes that do not divide a layer's input width (widths from input_widths())."""
        checks = [(n, w, self.group_for(self.weight_bits)) for n, w in widths.items() if n != "lm_head"]
        if self.head_bits:
            checks.append(("lm_head", widths["lm_head"], self.group_for(self.head_bits)))
        bad: dict[tuple[int, int], list[str]] = {}  # (group, width) -> layer names
        for name, width, group in checks:
            if group and width % group:
                bad.setdefault((group, width), []).append(name)
        return [f"group_size {g} does not divide the input width {w} of {', '.join(names)}"
                for (g, w), names in bad.items()]


def bnb_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _only_for(value, info: ValidationInfo, methods: tuple[str, ...]):
    """Reject an option the chosen method ignores (runs only when the user set the option)."""
    method = info.data.get("method")
    if method and method not in methods:
        raise ValueError(f"{info.field_name} applies to method {' / '.join(methods)} only, not {method}")
    return value


def layer_widths(n_embd: int, n_inner: int | None) -> dict[str, int]:
    """in_features of each block projection and of the LM head of a GPT-2."""
    inner = n_inner or 4 * n_embd
    return {"attn.c_attn": n_embd, "attn.c_proj": n_embd, "mlp.c_fc": n_embd, "mlp.c_proj": inner,
            "lm_head": n_embd}
