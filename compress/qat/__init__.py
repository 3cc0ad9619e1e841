"""Quantization-aware training: a quantized model trained through its own grid (compress.qat.loop)."""

from importlib import import_module

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"QatConfig": "compress.qat.config", "QatResult": "compress.qat.loop",
         "run_qat": "compress.qat.loop"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
