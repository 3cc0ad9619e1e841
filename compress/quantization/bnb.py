"""bitsandbytes: LLM.int8 (Linear8bitLt, outliers above `threshold` kept in fp) and 4-bit NF4/FP4
(Linear4bit, blocks of 64 with double-quantized absmax). bitsandbytes 0.50 runs both on CPU; LLM.int8
casts fp32 activations to fp16 before quantizing them, so its numerics are fp16 ones.

Saved with bitsandbytes' own state-dict serialization (the tensor names transformers writes for a
bnb model: `weight`, `SCB` / `weight.absmax`, `weight.quant_map`, `weight.quant_state.*`) in
safetensors, with transformers' BitsAndBytesConfig keys in config.json, and rebuilt here on load
without re-quantizing. These models have no ONNX form (refused at plan time by ExportConfig.check).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.handoff import WEIGHTS_FILE, read_quant_config
from compress.quantization.modules import block_linear_names, linear_weight, set_module

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig


def _bnb():
    try:
        import bitsandbytes
    except ImportError:
        raise UserError("bitsandbytes is not installed: pip install -e '.[bnb]'") from None
    # LLM.int8 casts fp32 inputs to fp16 by design (documented below) and logs it on every call.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_drop_cast_notice)
    return bitsandbytes


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    return "inputs will be cast" not in record.getMessage()


def _empty_module(method: str, in_f: int, out_f: int, threshold: float) -> nn.Module:
    bnb = _bnb()
    if method == "bnb-int8":
        return bnb.nn.Linear8bitLt(in_f, out_f, bias=True, has_fp16_weights=False, threshold=threshold)
    m = bnb.nn.Linear4bit(in_f, out_f, bias=True, compute_dtype=torch.float32, quant_type=method.removeprefix("bnb-"))
    # On AVX512-BF16 CPUs bitsandbytes 0.50 repacks the weight for a bf16 kernel at the first forward
    # and rounds its absmax when unpacking it to save, so logits would change at the first save.
    # Keep the fp32 dequantize + matmul path: same numerics before and after saving.
    m.support_avx512bf16_for_cpu = False
    return m


def bnb_linear(method: str, w: torch.Tensor, bias: torch.Tensor, threshold: float) -> nn.Module:
    """A bitsandbytes layer quantized (on CPU) from w [out, in] and bias."""
    bnb = _bnb()
    out_f, in_f = w.shape
    m = _empty_module(method, in_f, out_f, threshold)
    if method == "bnb-int8":
        m.weight = bnb.nn.Int8Params(w.contiguous(), requires_grad=False, has_fp16_weights=False)
    else:
        m.weight = bnb.nn.Params4bit(w.contiguous(), requires_grad=False, quant_type=m.weight.quant_type)
    m.bias = nn.Parameter(bias, requires_grad=False)
    return m.to("cpu")  # moving to a device is what quantizes the weight


def quantize_bnb(model: GPT2LMHeadModel, method: str, threshold: float) -> GPT2LMHeadModel:
    """Replace every block projection by its bitsandbytes layer (in place, on CPU)."""
    model = model.cpu()
    for name in block_linear_names(model):
        w, bias = linear_weight(model.get_submodule(name))
        set_module(model, name, bnb_linear(method, w, bias, threshold))
    return model


def run_bnb(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: None = None) -> GPT2LMHeadModel:
    """The bitsandbytes methods' entry (compress/quantization/methods.py): cfg.method picks the layer."""
    return quantize_bnb(model, cfg.method, cfg.threshold)


def bnb_quant_config(method: str, threshold: float, details: dict[str, Any]) -> dict[str, Any]:
    """transformers' BitsAndBytesConfig keys (plus ours under gpt2_edge)."""
    four = method != "bnb-int8"
    return {"quant_method": "bitsandbytes", "load_in_8bit": not four, "load_in_4bit": four,
            "llm_int8_threshold": threshold, "llm_int8_skip_modules": ["lm_head"],
            "bnb_4bit_quant_type": method.removeprefix("bnb-") if four else "fp4",
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_quant_storage": "uint8", "gpt2_edge": details}


def save_bnb(model: GPT2LMHeadModel, out_dir: Path, details: dict[str, Any]) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = bnb_quant_config(details["method"], details["threshold"], details)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _prequantized(method: str, t: dict[str, torch.Tensor], in_f: int, out_f: int, threshold: float) -> nn.Module:
    """Rebuild one bitsandbytes layer from its saved tensors (names relative to the layer)."""
    bnb = _bnb()
    m = _empty_module(method, in_f, out_f, threshold)
    if method == "bnb-int8":
        w = bnb.nn.Int8Params(t["weight"], requires_grad=False, has_fp16_weights=False)
        w.CB, w.SCB = t["weight"], t["SCB"]
        m.weight = w
    else:
        stats = {k.removeprefix("weight."): v for k, v in t.items() if k.startswith("weight.")}
        m.weight = bnb.nn.Params4bit.from_prequantized(t["weight"], stats, requires_grad=False, device="cpu")
    m.bias = nn.Parameter(t["bias"], requires_grad=False)
    return m


def load_bnb(model_dir: Path) -> GPT2LMHeadModel:
    qc = read_quant_config(model_dir)
    method, threshold = qc["gpt2_edge"]["method"], qc["gpt2_edge"]["threshold"]
    config_dict = json.loads((model_dir / "config.json").read_text())
    config_dict.pop("quantization_config")
    model = GPT2LMHeadModel(GPT2Config.from_dict(config_dict))
    tensors = load_file(str(model_dir / WEIGHTS_FILE))
    names = block_linear_names(model)
    for name in names:
        out_f, in_f = linear_weight(model.get_submodule(name))[0].shape
        local = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
        set_module(model, name, _prequantized(method, local, in_f, out_f, threshold))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and k.rpartition(".")[0] not in names
               and not k.startswith(tuple(n + ".weight." for n in names))]
    if unexpected or missing:
        raise UserError(f"{model_dir}: weights do not match config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.config.quantization_config = {"gpt2_edge": qc["gpt2_edge"]}  # so that save_model writes it back
    return model.eval()
