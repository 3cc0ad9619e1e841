"""Quantization-aware training: a quantized model trained through its own grid (compress.qat.loop)."""

from compress.qat.config import QatConfig
from compress.qat.loop import QatResult, run_qat

__all__ = ["QatConfig", "QatResult", "run_qat"]
