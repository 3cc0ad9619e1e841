"""The options of each quantization method (pydantic models mixed into QuantizeConfig by the method
table, compress/quantization/methods.py) and the one rule about them the plan checks. No torch here:
a plan with a quantize step is validated without importing the quantizers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig


class GptqOptions(BaseModel):
    damp: float = Field(0.01, gt=0, le=1, description="gptq: damping, a fraction of mean(diag(H))")
    act_order: bool = Field(False, description="gptq: quantize columns by decreasing Hessian diagonal")


class AwqOptions(BaseModel):
    search_grid: int = Field(20, ge=1, le=100, description="awq: alphas tried per layer (k / search_grid)")
    clip: bool = Field(True, description="awq: also search each weight group's clipping range")


class LlmInt8Options(BaseModel):
    threshold: float = Field(6.0, ge=0, le=1000, description="bnb-int8: outlier threshold (LLM.int8)")


class OutlierOptions(BaseModel):
    """The option of every method that quantizes activations per tensor (its table entry's `options`
    derive from this)."""

    allow_outliers: bool = Field(
        False, description="dynamic-int8 / ort-dynamic-int8 / smoothquant: run even when calibration finds an input quantized per "
                           "tensor with max/median above outlier_check.OUTLIER_LIMIT")


class SmoothQuantOptions(OutlierOptions):
    alpha: float = Field(0.5, ge=0, le=1, description="smoothquant: migration strength")


class DynamicOptions(OutlierOptions):
    smooth: float | None = Field(
        None, ge=0, le=1, description="dynamic-int8 / ort-dynamic-int8: SmoothQuant alpha; fold per-channel scales from calibration "
                                      "into the LayerNorms before quantizing (needs data.train)")


def smooths_activations(cfg: QuantizeConfig) -> bool:
    """Whether per-tensor activation inputs are divided by SmoothQuant factors (the method's or `smooth`)."""
    return cfg.quant_method.smooths or getattr(cfg, "smooth", None) is not None


def needs_outlier_windows(cfg: QuantizeConfig) -> bool:
    """Whether a method that does not calibrate by itself must still see calibration windows: to smooth,
    or for its activation-outlier check (allow_outliers without smoothing skips it)."""
    m = cfg.quant_method
    return m.int8_activations and not m.calibrates and (smooths_activations(cfg) or not cfg.allow_outliers)
