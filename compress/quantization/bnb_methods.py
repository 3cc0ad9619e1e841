"""The bitsandbytes methods (LLM.int8, NF4, FP4) as registry entries; the layers are in bnb.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from transformers import GPT2LMHeadModel

from compress.quantization.bnb import quantize_bnb
from compress.quantization.registry import Grid, Layout, QuantMethod

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

BNB = ("bitsandbytes", "bnb")  # the module and the pip extra that installs it


class LlmInt8Options(BaseModel):
    threshold: float = Field(6.0, ge=0, le=1000, description="bnb-int8: outlier threshold (LLM.int8)")


def run_bnb(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: None = None) -> GPT2LMHeadModel:
    return quantize_bnb(model, cfg.method, cfg.threshold)


METHODS = (
    QuantMethod("bnb-int8", bits=(8,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=run_bnb, options=LlmInt8Options, requires=BNB,
                summary="LLM.int8: outlier features above threshold kept in fp16"),
    QuantMethod("bnb-nf4", bits=(4,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=run_bnb, requires=BNB, summary="bitsandbytes NF4, blocks of 64"),
    QuantMethod("bnb-fp4", bits=(4,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=run_bnb, requires=BNB, summary="bitsandbytes FP4, blocks of 64"),
)
