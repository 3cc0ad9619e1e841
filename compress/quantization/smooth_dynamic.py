"""Dynamic int8 that keeps its quality on GPT-2's activation outliers: smooth first, then quantize.

Per-tensor int8 activations (torch.ao dynamic Linear, ONNX Runtime's DynamicQuantizeLinear +
MatMulInteger) are fast but give every channel the step of the largest one. SmoothQuant's
per-channel factors s_j = max|X_j|**alpha / max|W_j|**(1-alpha), measured on calibration windows and
folded into ln_1 / ln_2 / the value rows of c_attn (compress.quantization.smoothquant.smooth), divide
the outlier channels down and multiply the matching weight rows up; the model is still a stock fp32
GPT-2 with the same function, and the integer kernels then see tame activations:

    quantize: {method: dynamic-int8, smooth: 0.5}                 # torch.ao, CPU
    export:   {format: onnx, quantize: dynamic-int8, smooth: 0.5}  # ORT quantize_dynamic on the export

mlp.c_proj (after the GELU) cannot be smoothed and stays per tensor as it is, as does the LM head in
ONNX Runtime's case; the outlier check (outlier_check.py) still watches both.
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel

from compress.quantization.calibration import calibration_windows
from compress.quantization.dynamic import quantize_dynamic_smoothed  # noqa: F401 (the torch path, re-exported)
from compress.quantization.outlier_check import check_outliers, per_tensor_inputs
from compress.quantization.smoothquant import smooth

# Calibration of the export step's smoothing and outlier check (the export config has no calib fields).
EXPORT_CALIB_SAMPLES = 64
EXPORT_CALIB_SEQ_LEN = 256


@torch.no_grad()
def prepare_ort_dynamic(model: GPT2LMHeadModel, train_ids: torch.Tensor, alpha: float | None, allowed: bool,
                        where: str) -> dict:
    """Before ONNX Runtime's dynamic int8 of an fp32 export: check outliers on calibration windows of
    train_ids (refuse unless allowed), then fold smoothing into the model in place (alpha not None).
    Returns the outlier record for step.json."""
    seq_len = min(EXPORT_CALIB_SEQ_LEN, model.config.n_positions)
    windows = calibration_windows(train_ids, EXPORT_CALIB_SAMPLES, seq_len, seed=0)
    what = "ONNX Runtime dynamic int8" + (f" (smooth {alpha})" if alpha is not None else "")
    # ORT also quantizes the LM head's MatMul per tensor; its input (ln_f output) cannot be smoothed
    # without changing the tied token embeddings.
    checked = per_tensor_inputs(alpha is not None) + ("lm_head",)
    record = check_outliers(model, windows, checked, what, allowed, where)
    if alpha is not None:
        smooth(model, windows, alpha)
    return record
