"""Quantization-aware training: a quantized model trained through its own grid (compress.qat.loop)."""
