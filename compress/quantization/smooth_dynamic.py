"""Dynamic int8 that keeps its quality on GPT-2's activation outliers: smooth first, then quantize.

Per-tensor int8 activations (torch.ao dynamic Linear, ONNX Runtime's DynamicQuantizeLinear +
MatMulInteger) are fast but give every channel the step of the largest one. SmoothQuant's
per-channel factors s_j = max|X_j|**alpha / max|W_j|**(1-alpha), measured on calibration windows and
folded into ln_1 / ln_2 / the value rows of c_attn (compress.quantization.smoothquant.smooth), divide
the outlier channels down and multiply the matching weight rows up; the model is still a stock fp32
GPT-2 with the same function, and the integer kernels then see tame activations:

    quantize: {method: dynamic-int8, smooth: 0.5}      # torch.ao, CPU (dynamic.py)
    quantize: {method: ort-dynamic-int8, smooth: 0.5}  # ORT quantize_dynamic on the export (ort_graph.py)

mlp.c_proj (after the GELU) cannot be smoothed and stays per tensor as it is, as does the LM head in
ONNX Runtime's case; the outlier check (outlier_check.py, run by api.quantize before this) still
watches both.
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel

from compress.quantization.smoothquant import smooth


@torch.no_grad()
def smooth_before_dynamic(model: GPT2LMHeadModel, windows: torch.Tensor | None, alpha: float | None) -> None:
    """Fold SmoothQuant factors (alpha; None: no smoothing) into the fp32 model in place."""
    if alpha is None:
        return
    if windows is None:
        raise ValueError("smoothing needs calibration windows")
    smooth(model, windows, alpha)
