"""Quantization-aware training: a quantized model trained through its own grid (compress.qat.loop)."""

from compress.lazy import lazy_exports

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"QatConfig": "compress.qat.config", "QatResult": "compress.qat.loop",
         "run_qat": "compress.qat.loop"}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
