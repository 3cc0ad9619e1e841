"""Structured pruning of GPT-2 to a smaller stock GPT2LMHeadModel (see docs/pruning.md).

    from compress import prune, PruneConfig
    small = prune(model, PruneConfig(importance="activation", mlp=0.5, width=0.25, layers=2), calib_ids)
"""

from compress.pruning.api import choose, prune, prune_with_indices
from compress.pruning.config import PruneConfig, RoundTo
from compress.pruning.compensation import correct_layernorms
from compress.pruning.importance import Scores, importance
from compress.pruning.selection import Keep, select
from compress.pruning.shapes import Shape, budget_shape, param_count, target_shape
from compress.pruning.slicing import slice_gpt2

__all__ = ["prune", "prune_with_indices", "choose", "PruneConfig", "RoundTo", "Scores", "importance",
           "correct_layernorms", "Keep", "select", "Shape", "budget_shape", "param_count", "target_shape", "slice_gpt2"]
