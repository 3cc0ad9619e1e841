"""compress.quantize: one function for every method, on a model in memory."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.calibration import calibration_windows
from compress.quantization.config import QuantizeConfig, layer_widths
from compress.quantization.outlier_check import calibrates_for_outliers, record_outliers


def details(cfg: QuantizeConfig, n_layer: int) -> dict[str, Any]:
    """What config.json records about the quantization (the config with its defaults resolved, and
    the storage layout that storage.py reads back); with overrides, every module's precision."""
    group = cfg.group_for(cfg.weight_bits)
    out = cfg.model_dump(mode="json", exclude=None if cfg.overrides else {"overrides"})
    out |= {"bits": cfg.weight_bits, "group_size": group or "per-channel", "layout": cfg.quant_method.layout.value}
    if cfg.overrides:
        out["precisions"] = {n: {"bits": b, "group_size": g or "per-channel"}
                             for n, (b, g) in cfg.module_precisions(n_layer).items()}
    return out


def check_widths(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> None:
    widths = layer_widths(model.config.n_embd, model.config.n_inner)
    problems = cfg.width_problems(widths, model.config.n_layer)
    if problems:
        raise UserError(f"quantize.group_size: {'; '.join(problems)}")
    if cfg.overrides:
        problems = cfg.override_problems(model.config.n_layer, widths)
        if problems:
            raise UserError(f"quantize.overrides: {'; '.join(problems)}")


def take_factors(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> None:
    """A factorized model (compress.lowrank): each factor becomes a projection of its own (in place), after
    checking that the method quantizes factors and that its group size divides every rank (the input
    width of each second factor)."""
    from compress.lowrank.modules import as_factor_pairs, lowrank_record

    record = lowrank_record(model.config)
    if record is None:
        return
    problem = cfg.factor_problem(f"the factorize step ({record['method']})", [int(r) for r in record["ranks"].values()])
    if problem:
        raise UserError(f"quantize: {problem}")
    as_factor_pairs(model)


@torch.no_grad()
def quantize(model: GPT2LMHeadModel, cfg: QuantizeConfig, calib: torch.Tensor | None = None) -> GPT2LMHeadModel:
    """Quantize a GPT-2 in place and return it; save it with compress.models.save_model.

    `calib`: token ids for the methods that calibrate (gptq, smoothquant, awq), a 1-D stream (random
    windows are drawn from it) or (N, T) windows.
    """
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError("quantize: the model is already quantized; start from an fp32 model")
    check_widths(model, cfg)
    take_factors(model, cfg)
    model.eval()
    windows = None
    if cfg.quant_method.calibrates or calibrates_for_outliers(cfg, calib):
        if calib is None:
            raise UserError(f"quantize: method {cfg.method} needs calibration token ids (calib=...)")
        seq_len = min(cfg.calib_seq_len, model.config.n_positions)
        windows = calibration_windows(calib, cfg.calib_samples, seq_len, cfg.seed)
    # activation outliers measured on the fp32 model: recorded, and refused for per-tensor int8
    outliers = record_outliers(model, cfg, windows) if windows is not None else None
    model = cfg.quant_method.run(model, cfg, windows)
    record = details(cfg, model.config.n_layer) | ({"outliers": outliers} if outliers else {})
    model.config.quantization_config = {"gpt2_edge": record}
    return model.eval()
