"""Structured pruning of GPT-2 to a smaller stock GPT2LMHeadModel (see docs/pruning.md).

    from compress import prune, PruneConfig
    small = prune(model, PruneConfig(importance="activation", mlp=0.5, width=0.25, layers=2), calib_ids)
"""

from compress.lazy import lazy_exports

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
# The function `importance` is compress.pruning.importance.importance: the package attribute of that
# name is the submodule once anything imported it.
_LAZY = {"prune": "compress.pruning.api", "prune_with_indices": "compress.pruning.api",
         "choose": "compress.pruning.api", "PruneConfig": "compress.pruning.config",
         "RoundTo": "compress.pruning.config",
         "Scores": "compress.pruning.importance",
         "correct_layernorms": "compress.pruning.compensation", "Keep": "compress.pruning.selection",
         "select": "compress.pruning.selection", "Shape": "compress.pruning.shapes",
         "budget_shape": "compress.pruning.shapes", "param_count": "compress.pruning.shapes",
         "target_shape": "compress.pruning.shapes", "slice_gpt2": "compress.pruning.slicing"}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
