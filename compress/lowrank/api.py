"""compress.lowrank.factorize: replace the chosen block projections of a GPT-2 by low-rank factors."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.lowrank.config import FactorizeConfig, projection_shapes
from compress.lowrank.methods import METHODS
from compress.lowrank.modules import LowRankLinear, lowrank_record, set_lowrank_record, set_module
from compress.lowrank.ranks import budget_ranks, energy_rank, max_rank
from compress.quantization.calibration import calibration_windows, input_hooks, run_model
from compress.quantization.gptq import HessianSum
from compress.quantization.modules import linear_weight
from compress.sparsity.pattern import drop_sparsity_record

log = logging.getLogger(__name__)


def check_model(model: GPT2LMHeadModel, cfg: FactorizeConfig) -> dict[str, tuple[int, int]]:
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError("factorize: the model is quantized; factorize before the quantize step")
    if lowrank_record(model.config) is not None:
        raise UserError("factorize: the model is already factorized")
    shapes = projection_shapes(model.config.n_embd, model.config.n_inner)
    bad = cfg.rank_problem(shapes)
    if bad:
        raise UserError(f"factorize.rank: {bad}")
    return shapes


@torch.no_grad()
def factorize(model: GPT2LMHeadModel, cfg: FactorizeConfig, calib: torch.Tensor | None = None,
              log_: logging.Logger | None = None) -> dict[str, Any]:
    """Factorize in place; returns {module path: {rank, shape, max_rank, energy_kept}}. `calib`: a 1-D
    token stream (or (N, T) windows) for the methods that calibrate."""
    out_log = log_ or log
    shapes = check_model(model, cfg)
    model.eval()
    method = METHODS[cfg.method]
    names = {f"transformer.h.{i}.{local}": local for i in range(model.config.n_layer) for local in cfg.layers}
    hs = None
    if method.calibrates:
        if calib is None:
            raise UserError(f"factorize: method {cfg.method} needs calibration token ids (data.train)")
        seq_len = min(cfg.seq_len or 256, model.config.n_positions)
        windows = calibration_windows(calib, max(1, -(-cfg.calib_tokens // seq_len)), seq_len, cfg.seed)
        hs = HessianSum()
        with input_hooks({n: model.get_submodule(n) for n in names}, hs.add):
            run_model(model, windows)  # the dense model's inputs (one pass: a global budget needs every spectrum)
    spectra, biases = {}, {}
    for name in names:
        w, biases[name] = linear_weight(model.get_submodule(name))
        spectra[name] = method.decompose(name, w.cpu(), hs.get(name) if hs else None, cfg)
    caps = {name: max_rank(*shapes[local]) for name, local in names.items()}
    if cfg.rank is not None:
        ranks = {name: cfg.rank for name in names}
    elif cfg.params is not None:
        ranks = budget_ranks({name: (spectra[name].s, *shapes[local]) for name, local in names.items()}, cfg.params,
                             cfg.rank_multiple)
    else:
        ranks = {name: energy_rank(spectra[name].s, cfg.energy, caps[name], cfg.rank_multiple) for name in names}
    device = model.transformer.wte.weight.device
    layers = {}
    for name, local in names.items():
        sp, r = spectra[name], ranks[name]
        first, second = sp.factors(r)
        set_module(model, name, LowRankLinear.of(first.float(), second.float(), biases[name]).to(device))
        e = sp.s.double() ** 2
        layers[name] = {"rank": r, "shape": list(shapes[local]), "max_rank": caps[name],
                        "energy_kept": round(float(e[:r].sum() / e.sum().clamp_min(1e-30)), 6)}
    set_lowrank_record(model.config, {"method": cfg.method, "ranks": {n: v["rank"] for n, v in layers.items()}})
    drop_sparsity_record(model.config)  # the factors replace the sparsified weights (plan note)
    out_log.info("factorize: %d projections, ranks %d-%d (%s)", len(layers), min(ranks.values()),
                 max(ranks.values()), cfg.method)
    return layers
