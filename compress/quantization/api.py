"""compress.quantize: one function for every method, on a model in memory."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.calibration import calibration_windows
from compress.quantization.config import CALIBRATED, QuantizeConfig, layer_widths
from compress.quantization.modules import block_linear_names, install, linear_weight
from compress.quantization.outlier_guard import calibrates_for_outliers, record_outliers
from compress.quantization.rtn import rtn

log = logging.getLogger(__name__)


def details(cfg: QuantizeConfig) -> dict[str, Any]:
    """What config.json records about the quantization (the config with its defaults resolved)."""
    group = cfg.group_for(cfg.weight_bits)
    return cfg.model_dump(mode="json") | {"bits": cfg.weight_bits, "group_size": group or "per-channel"}


def check_widths(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> None:
    problems = cfg.width_problems(layer_widths(model.config.n_embd, model.config.n_inner))
    if problems:
        raise UserError(f"quantize.group_size: {'; '.join(problems)}")


def _rtn_all(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> GPT2LMHeadModel:
    bits = cfg.weight_bits
    records = {}
    for name in block_linear_names(model):
        w, bias = linear_weight(model.get_submodule(name))
        records[name] = rtn(name, w, bias, bits, cfg.group_for(bits), cfg.sym)
    return install(model, records | _rtn_head(model, cfg))


def _rtn_head(model: GPT2LMHeadModel, cfg: QuantizeConfig) -> dict:
    if not cfg.head_bits:
        return {}
    w, _ = linear_weight(model.lm_head)
    return {"lm_head": rtn("lm_head", w, None, cfg.head_bits, cfg.group_for(cfg.head_bits), cfg.sym)}


@torch.no_grad()
def quantize(model: GPT2LMHeadModel, cfg: QuantizeConfig, calib: torch.Tensor | None = None) -> GPT2LMHeadModel:
    """Quantize a GPT-2 in place and return it; save it with compress.models.save_model.

    `calib`: token ids for gptq / smoothquant, a 1-D stream (random windows are drawn from it) or
    (N, T) windows.
    """
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError("quantize: the model is already quantized; start from an fp32 model")
    check_widths(model, cfg)
    model.eval()
    windows = None
    if cfg.method in CALIBRATED or calibrates_for_outliers(cfg, calib):
        if calib is None:
            raise UserError(f"quantize: method {cfg.method} needs calibration token ids (calib=...)")
        seq_len = min(cfg.calib_seq_len, model.config.n_positions)
        windows = calibration_windows(calib, cfg.calib_samples, seq_len, cfg.seed)
    # activation outliers measured on the fp32 model: recorded, and refused for per-tensor int8
    outliers = record_outliers(model, cfg, windows) if windows is not None else None
    bits, head_bits = cfg.weight_bits, cfg.head_bits
    head_group = cfg.group_for(head_bits) if head_bits else None
    if cfg.method == "rtn":
        _rtn_all(model, cfg)
    elif cfg.method == "gptq":
        from compress.quantization.gptq import quantize_gptq

        quantize_gptq(model, windows, bits, cfg.group_for(bits), cfg.sym, cfg.damp, cfg.act_order,
                      head_bits, head_group, log=log)
    elif cfg.method == "smoothquant":
        from compress.quantization.smoothquant import quantize_smoothquant

        quantize_smoothquant(model, windows, cfg.alpha, head_bits, head_group)
    elif cfg.method == "dynamic-int8":
        from compress.quantization.smooth_dynamic import quantize_dynamic_smoothed

        model, _ = quantize_dynamic_smoothed(model, windows, cfg.smooth)
    else:
        from compress.quantization.bnb import quantize_bnb

        model = quantize_bnb(model, cfg.method, cfg.threshold)
    model.config.quantization_config = {"gpt2_edge": details(cfg) | ({"outliers": outliers} if outliers else {})}
    return model.eval()
