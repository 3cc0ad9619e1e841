"""Measuring only: perplexity, latency, size and memory of a GPT-2 on any backend.

This package imports nothing from `compress` or `export`; a backend plugs in through the small
`Runner` protocol in `evalsuite.runner`. The names below are imported on first use, so importing a
light submodule (evalsuite.errors, evalsuite.data) does not import torch.
"""

import sys
import types
from importlib import import_module

_LAZY = {"PerplexityResult": "evalsuite.perplexity", "perplexity": "evalsuite.perplexity",
         "Runner": "evalsuite.runner", "TorchRunner": "evalsuite.runner"}
__all__ = ["PerplexityResult", "Runner", "TorchRunner", "perplexity"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evalsuite' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule evalsuite.perplexity sets this package's `perplexity` to it; the
        # package's `perplexity` is the function (as when it was imported eagerly).
        if name == "perplexity" and isinstance(value, types.ModuleType):
            value = value.perplexity
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
