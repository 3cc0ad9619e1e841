"""compress.sparsity.sparsify: prune the chosen block projections of a GPT-2 in place."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.calibration import calibration_windows, capture_block_inputs, input_hooks, run_block
from compress.sparsity.calibrate import StatsSum
from compress.sparsity.config import INPUT_WIDTH, SparsifyConfig
from compress.sparsity.methods import METHODS
from compress.sparsity.pattern import CONFIG_KEY, block_weights, measure, set_weight, sparsity_record, weight_of

log = logging.getLogger(__name__)


def check_model(model: GPT2LMHeadModel, cfg: SparsifyConfig) -> None:
    """What the plan may not have known: quantized weights, widths an N:M group does not divide."""
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError("sparsify: the model is quantized; sparsify before the quantize step")
    from compress.lowrank.modules import lowrank_record

    if lowrank_record(model.config) is not None:
        raise UserError("sparsify: the model is factorized (low-rank factors); sparsify takes dense projections")
    t = cfg.target
    for local in cfg.layers if t.m else ():
        width = weight_of(model.transformer.h[0].get_submodule(local)).shape[1]
        if width % t.m:
            raise UserError(f"sparsify.pattern: groups of {t.m} do not divide {INPUT_WIDTH[local]} {width} "
                            f"(input of {local})")


@torch.no_grad()
def sparsify(model: GPT2LMHeadModel, cfg: SparsifyConfig, calib: torch.Tensor | None = None,
             log_: logging.Logger | None = None) -> dict[str, Any]:
    """Prune in place; returns {module path: {sparsity, pattern}} as measured afterwards. `calib`: a 1-D
    token stream (or (N, T) windows) for the methods that calibrate."""
    out_log = log_ or log
    check_model(model, cfg)
    model.eval()
    method, target = METHODS[cfg.method], cfg.target
    windows = None
    if method.calibrates:
        if calib is None:
            raise UserError(f"sparsify: method {cfg.method} needs calibration token ids (data.train)")
        seq_len = min(cfg.seq_len or 256, model.config.n_positions)
        n = max(1, -(-cfg.calib_tokens // seq_len))
        windows = calibration_windows(calib, n, seq_len, cfg.seed)
        calls = capture_block_inputs(model, windows)
    for i, block in enumerate(model.transformer.h):
        stats = None
        if windows is not None:
            stats = StatsSum(method.hessian)
            with input_hooks({n: block.get_submodule(n) for n in cfg.layers}, stats.add):
                run_block(block, calls)
        for local in cfg.layers:
            module = block.get_submodule(local)
            w = weight_of(module)
            new = method.prune(f"transformer.h.{i}.{local}", w.cpu(), stats.get(local) if stats else None,
                               target, cfg)
            set_weight(module, new)
        if windows is not None:
            calls = run_block(block, calls)  # the pruned block's outputs feed block i+1
        out_log.info("sparsify: block %d/%d pruned (%s, %s)", i + 1, model.config.n_layer, cfg.method,
                     target.describe())
    layers = {name: measure(w, target.pattern) for name, w in block_weights(model, tuple(cfg.layers))}
    setattr(model.config, CONFIG_KEY, {"method": cfg.method, "pattern": target.pattern,
                                       "sparsity": round(target.fraction, 6), "layers": list(cfg.layers)})
    return layers


__all__ = ["sparsify", "sparsity_record"]
