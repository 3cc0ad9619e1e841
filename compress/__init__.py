"""gpt2-edge: shrink a GPT-2 (prune, distil, quantize) and run plans of such steps."""

__version__ = "0.1.0"
