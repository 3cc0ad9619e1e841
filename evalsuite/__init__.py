"""Measuring only: perplexity, latency, size and memory of a GPT-2 on any backend.

This package imports nothing from `compress` or `export`; a backend plugs in through the small
`Runner` protocol in `evalsuite.runner`. The names below are imported on first use, so importing a
light submodule (evalsuite.errors, evalsuite.data) does not import torch.
"""

from importlib import import_module

_LAZY = {"PerplexityResult": "evalsuite.perplexity", "perplexity": "evalsuite.perplexity",
         "Runner": "evalsuite.runner", "TorchRunner": "evalsuite.runner"}
__all__ = ["PerplexityResult", "Runner", "TorchRunner", "perplexity"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evalsuite' has no attribute {name!r}")
