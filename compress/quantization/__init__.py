"""int8 / 4-bit quantization of GPT-2: rtn, gptq, awq, smoothquant (W8A8), bitsandbytes, torch dynamic int8.

Each method is one registry entry (registry.QuantMethod, the table in methods.py).

    from compress import quantize, QuantizeConfig
    q = quantize(model, QuantizeConfig(method="gptq", bits=4, group_size=128), calib_ids)

The on-disk format and the hand-off to the ONNX exporter are described in storage.py and handoff.py.
"""

from compress.quantization.api import quantize
from compress.quantization.config import QuantizeConfig
from compress.quantization.footprint import quantized_bytes
from compress.quantization.handoff import LinearCodes, is_quantized_dir
from compress.quantization.storage import read_linear_codes as quantized_linears

__all__ = ["quantize", "QuantizeConfig", "LinearCodes", "is_quantized_dir", "quantized_linears", "quantized_bytes"]
