"""ONNX Runtime's own quantizers as quantization methods (their entries: methods.py): the layout is
applied in the exported graph.

    - quantize: {method: ort-int4, group_size: 32}       # MatMulNBits, ORT's blockwise RTN (symmetric)
    - quantize: {method: ort-int8}                       # the same at 8 bits (block 128)
    - quantize: {method: ort-dynamic-int8, smooth: 0.5}  # MatMulInteger, activations int8 per call
    - export: {format: onnx}                             # writes what the method's OnnxForm says

The quantize step leaves the torch weights as they are (ort-dynamic-int8 folds its SmoothQuant factors
into the LayerNorms first, after the activation-outlier check: smooth_dynamic.py) and records the
method in config.json (layout onnx-graph); the ONNX export then runs ONNX Runtime's quantizer on the
traced graph (export.onnx_quant.ORT_PASSES, keyed by OnnxForm). ORT quantizes every weight MatMul, the
LM head included. `group_size` is the MatMulNBits block (16..256; a last partial block is padded, so it
need not divide the widths). The torch model of the step is the fp32 model: its perplexity is the
float one, and the export's validation measures the quantized graph against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel

    from compress.quantization.config import QuantizeConfig


def keep_weights(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: torch.Tensor | None) -> GPT2LMHeadModel:
    """ort-int4 / ort-int8: nothing to do in torch; the export quantizes the graph."""
    return model


def smooth_for_ort_dynamic(model: GPT2LMHeadModel, cfg: QuantizeConfig,
                           windows: torch.Tensor | None) -> GPT2LMHeadModel:
    """ort-dynamic-int8: fold SmoothQuant factors (smooth: alpha) into the fp32 model; the outlier check
    ran before (api.quantize)."""
    from compress.quantization.smooth_dynamic import smooth_before_dynamic

    smooth_before_dynamic(model, windows, cfg.smooth)
    return model
