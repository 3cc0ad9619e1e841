"""gpt2-edge: shrink a GPT-2 (prune, distil, quantize) and run plans of such steps.

    from compress import prune, PruneConfig, distill, DistillConfig, quantize, QuantizeConfig

The names are imported on first use, so `python -m compress.run --help` and plan errors answer
without importing torch.
"""

from compress.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {"DistillConfig": "compress.distillation", "distill": "compress.distillation",
         "PruneConfig": "compress.pruning", "prune": "compress.pruning",
         "QuantizeConfig": "compress.quantization", "quantize": "compress.quantization",
         "FinetuneConfig": "compress.finetune", "run_finetune": "compress.finetune",
         "QatConfig": "compress.qat", "run_qat": "compress.qat",
         "run_search": "compress.search.run"}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
