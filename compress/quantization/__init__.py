"""int8 / 4-bit quantization of GPT-2: rtn, gptq, awq, smoothquant (W8A8), bitsandbytes, torch dynamic int8.

Each method is one registry entry (registry.QuantMethod, the table in methods.py).

    from compress import quantize, QuantizeConfig
    q = quantize(model, QuantizeConfig(method="gptq", bits=4, group_size=128), calib_ids)

The on-disk format and the hand-off to the ONNX exporter are described in storage.py and handoff.py.
"""

from compress.lazy import lazy_exports

# name -> (module, attribute), imported on first use: the export step's config reads
# compress.quantization.registry at plan time, and importing this package must not import torch
# (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"quantize": ("compress.quantization.api", "quantize"),
         "QuantizeConfig": ("compress.quantization.config", "QuantizeConfig"),
         "LinearCodes": ("compress.quantization.handoff", "LinearCodes"),
         "is_quantized_dir": ("compress.quantization.handoff", "is_quantized_dir"),
         "quantized_linears": ("compress.quantization.storage", "read_linear_codes"),
         "quantized_bytes": ("compress.quantization.footprint", "quantized_bytes")}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
