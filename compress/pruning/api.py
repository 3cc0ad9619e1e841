"""The library entry point: prune(model, PruneConfig(...), calib_ids) -> a smaller stock GPT-2.

    target shape (shapes.py) -> importance scores (importance.py) -> kept indices (selection.py)
    -> LayerNorm correction (compensation.py) -> sliced model (slicing.py)
"""

from __future__ import annotations

import copy

import torch
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from compress.errors import UserError
from compress.pruning.compensation import correct_layernorms
from compress.pruning.config import CALIBRATED, PruneConfig
from compress.pruning.importance import importance
from compress.pruning.selection import Keep, select
from compress.pruning.shapes import Shape, target_problems, target_shape
from compress.pruning.slicing import slice_gpt2
from compress.training import sample_batch

DEFAULT_SEQ_LEN = 256


def prune(model: GPT2LMHeadModel, cfg: PruneConfig, calib_ids: torch.Tensor | None = None) -> GPT2LMHeadModel:
    """A new, smaller GPT2LMHeadModel; `model` is left as it was.

    calib_ids: a 1-D token stream to calibrate on. taylor and activation need it; magnitude and
    random do not, but use it for the LayerNorm correction when given. A config that prunes nothing
    returns an unchanged copy.
    """
    return prune_with_indices(model, cfg, calib_ids)[0]


def prune_with_indices(model: GPT2LMHeadModel, cfg: PruneConfig,
                       calib_ids: torch.Tensor | None = None) -> tuple[GPT2LMHeadModel, Keep]:
    """prune(), also returning which blocks, heads and channels of `model` were kept."""
    if cfg.prunes_nothing():
        check_prunable(model)
        return copy.deepcopy(model), Keep.everything(Shape.of_config(model.config))
    batches = None if calib_ids is None else calibration_batches(calib_ids, cfg, model.config.n_positions)
    keep = _choose(model, cfg, batches)
    if cfg.correct_layernorm and batches and len(keep.embd) < model.config.n_embd:
        model = correct_layernorms(model, keep.embd, batches)
    return slice_gpt2(model, keep), keep


def choose(model: GPT2LMHeadModel, cfg: PruneConfig, calib_ids: torch.Tensor | None = None) -> Keep:
    """Which blocks, heads and channels stay (no tensor is cut here)."""
    batches = None if calib_ids is None else calibration_batches(calib_ids, cfg, model.config.n_positions)
    return _choose(model, cfg, batches)


def _choose(model: GPT2LMHeadModel, cfg: PruneConfig, batches: list[torch.Tensor] | None) -> Keep:
    check_prunable(model)
    shape = Shape.of_config(model.config)
    problems = target_problems(shape, cfg)
    if problems:
        raise UserError(f"prune: {'; '.join(problems)}")
    target = target_shape(shape, cfg)
    if target == shape:
        return Keep.everything(shape)
    if cfg.importance in CALIBRATED and not batches:
        raise UserError(f"prune: importance={cfg.importance} needs calibration tokens (calib_ids)")
    return select(importance(model, cfg.importance, batches, cfg.seed), target)


def calibration_batches(ids: torch.Tensor, cfg: PruneConfig, n_positions: int) -> list[torch.Tensor]:
    """calib_tokens worth of random windows of seq_len + 1 tokens, (B, T+1) each, fixed by cfg.seed."""
    seq_len = cfg.seq_len or min(DEFAULT_SEQ_LEN, n_positions)
    if seq_len > n_positions:
        raise UserError(f"prune: seq_len={seq_len} exceeds the model's {n_positions} positions")
    ids = ids.flatten()
    if ids.numel() < seq_len + 2:
        raise UserError(f"prune: calibration text has {ids.numel()} tokens, fewer than seq_len + 2 ({seq_len + 2})")
    n = max(1, cfg.calib_tokens // seq_len)
    windows = sample_batch(ids, n, seq_len, cfg.seed, step=0)  # (n, T+1)
    return list(windows.split(cfg.batch_size))


def check_prunable(model: torch.nn.Module) -> None:
    """Pruning slices the Conv1D tensors of a full-precision, stock GPT2LMHeadModel."""
    if not isinstance(model, GPT2LMHeadModel):
        raise UserError(f"prune: expected a GPT2LMHeadModel, got {type(model).__name__}")
    for i, block in enumerate(model.transformer.h):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            module = block.get_submodule(name)
            if not isinstance(module, Conv1D) or not module.weight.is_floating_point():
                raise UserError(f"prune: transformer.h.{i}.{name} is a {type(module).__name__}, not a "
                                "float Conv1D: prune a full-precision GPT-2 (before quantizing)")
