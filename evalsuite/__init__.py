"""Measuring only: perplexity, latency, size and memory of a GPT-2 on any backend.

This package imports nothing from `compress` or `export`; a backend plugs in through the small
`Runner` protocol in `evalsuite.runner`.
"""

from evalsuite.perplexity import PerplexityResult, perplexity
from evalsuite.runner import Runner, TorchRunner

__all__ = ["PerplexityResult", "Runner", "TorchRunner", "perplexity"]
