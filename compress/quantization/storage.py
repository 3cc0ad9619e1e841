"""Save and load quantized GPT-2 directories.

rtn / gptq / smoothquant / dynamic-int8 are written in the compressed-tensors layout (the format that
llm-compressor writes and vLLM loads), described by `quantization_config` in config.json:

    weight-only ("pack-quantized"): <layer>.weight_packed int32 [out, in*bits/32] (codes packed along
        the input dim, element k of each 32/bits at bit k*bits, stored with offset 2**(bits-1)),
        <layer>.weight_scale fp32 [out, groups], <layer>.weight_shape int64 [2],
        <layer>.weight_zero_point int32 [ceil(out*bits/32), groups] (asymmetric only, packed along out)
    W8A8 / dynamic ("int-quantized"): <layer>.weight int8 [out, in], <layer>.weight_scale fp32 [out, 1],
        <layer>.input_scale fp32 [1] (static W8A8 only)

Everything else (embeddings, LayerNorms, biases) is fp32 as save_pretrained writes it. Our own
settings (method, lm_head, gptq options) sit beside, under quantization_config.gpt2_edge.
bitsandbytes models use bitsandbytes' serialization instead (see bnb.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from compress.errors import UserError
from compress.quantization.handoff import WEIGHTS_FILE, QuantizedLinear, read_quant_config
from compress.quantization.modules import install, quant_linears
from compress.quantization.registry import Layout

BLOCK_TARGET = r"re:.*\.(c_attn|c_proj|c_fc)$"


# -- packing ---------------------------------------------------------------------------------------

def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes [rows, cols] -> int32 [rows, ceil(cols*bits/32)], element k at bit k*bits."""
    per_word = 32 // bits
    rows, cols = codes.shape
    pad = -cols % per_word
    u = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).view(rows, -1, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (u << shifts).sum(dim=-1)  # (rows, words) in [0, 2**32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of pack_int32 -> uint8 [rows, cols]."""
    per_word = 32 // bits
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    u = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & (2**bits - 1)  # (rows, words, per_word)
    return u.reshape(packed.shape[0], -1)[:, :cols].to(torch.uint8)


# -- quantization_config ---------------------------------------------------------------------------

def _weights_scheme(bits: int, group_size: int, in_features: int, sym: bool) -> dict[str, Any]:
    per_channel = group_size == in_features
    return {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False,
            "strategy": "channel" if per_channel else "group",
            "group_size": None if per_channel else group_size}


def quant_config(records: dict[str, QuantizedLinear], details: dict[str, Any]) -> dict[str, Any]:
    """The compressed-tensors quantization_config for these records (one scheme per group)."""
    groups, ignore = {}, []
    layout = Layout(details["layout"])
    w8a8 = layout in (Layout.INT8, Layout.INT8_DYNAMIC)
    for key, target in (("group_0", BLOCK_TARGET), ("group_1", "lm_head")):
        members = [r for n, r in records.items() if (n == "lm_head") == (target == "lm_head")]
        if not members:
            ignore += ["lm_head"] if target == "lm_head" else []
            continue
        r = members[0]
        scheme = {"targets": [target],
                  "weights": _weights_scheme(r.bits, r.group_size, r.in_features, details["sym"]),
                  "input_activations": None, "output_activations": None}
        if w8a8 and target != "lm_head":
            scheme["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor",
                                           "dynamic": layout is Layout.INT8_DYNAMIC}
        groups[key] = scheme
    fmt = "int-quantized" if w8a8 else "pack-quantized"
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": groups, "ignore": ignore, "gpt2_edge": details}


def _details(model_dir: Path) -> dict[str, Any]:
    qc = read_quant_config(model_dir)
    if qc is None:
        raise UserError(f"{model_dir}: not a quantized model (no quantization_config in config.json)")
    if "gpt2_edge" not in qc:
        raise UserError(f"{model_dir}: quantization_config was not written by gpt2-edge "
                        f"(quant_method {qc.get('quant_method')!r}); cannot load it")
    return qc["gpt2_edge"] | {"layout": stored_layout(qc).value}


def stored_layout(qc: dict[str, Any]) -> Layout:
    """The layout a saved quantization_config describes (read from its format in dirs written before
    gpt2_edge recorded the layout)."""
    if "layout" in qc["gpt2_edge"]:
        return Layout(qc["gpt2_edge"]["layout"])
    if qc.get("quant_method") == "bitsandbytes":
        return Layout.BITSANDBYTES
    if qc.get("format") == "pack-quantized":
        return Layout.PACKED
    acts = qc["config_groups"]["group_0"]["input_activations"]
    return Layout.INT8_DYNAMIC if acts and acts["dynamic"] else Layout.INT8


# -- tensors of one layer --------------------------------------------------------------------------

def layer_tensors(r: QuantizedLinear, int_quantized: bool, sym: bool) -> dict[str, torch.Tensor]:
    """The on-disk tensors of one quantized layer, keyed by their full names."""
    half = 2 ** (r.bits - 1)
    out: dict[str, torch.Tensor] = {f"{r.name}.weight_scale": r.scales.float().contiguous()}
    if int_quantized:  # int8 stored as is, signed
        out[f"{r.name}.weight"] = (r.q.to(torch.int16) - half).to(torch.int8)
    else:
        out[f"{r.name}.weight_packed"] = pack_int32(r.q, r.bits)
        out[f"{r.name}.weight_shape"] = torch.tensor([r.out_features, r.in_features], dtype=torch.int64)
    if not sym:
        out[f"{r.name}.weight_zero_point"] = pack_int32(r.zeros.t(), r.bits).t().contiguous()
    if r.input_scale is not None:
        out[f"{r.name}.input_scale"] = torch.tensor([r.input_scale], dtype=torch.float32)
    if r.bias is not None:
        out[f"{r.name}.bias"] = r.bias.float().contiguous()
    return out


def layer_record(name: str, t: dict[str, torch.Tensor], bits: int) -> QuantizedLinear:
    """Read one layer back from its tensors (names relative to the layer)."""
    half = 2 ** (bits - 1)
    scales = t["weight_scale"].float()
    if "weight_packed" in t:
        out_f, in_f = (int(v) for v in t["weight_shape"])
        q = unpack_int32(t["weight_packed"], bits, in_f)
    else:
        q = (t["weight"].to(torch.int16) + half).to(torch.uint8)
        out_f, in_f = q.shape
    n_groups = scales.shape[1]
    if "weight_zero_point" in t:
        zeros = unpack_int32(t["weight_zero_point"].t(), bits, out_f).t().contiguous()
    else:
        zeros = torch.full((out_f, n_groups), half, dtype=torch.uint8)
    input_scale = float(t["input_scale"].reshape(-1)[0]) if "input_scale" in t else None
    return QuantizedLinear(name=name, bits=bits, group_size=in_f // n_groups, q=q, scales=scales,
                           zeros=zeros, bias=t.get("bias"), input_scale=input_scale)


def _bits_of(qc: dict[str, Any], name: str) -> int:
    group = qc["config_groups"]["group_1" if name == "lm_head" else "group_0"]
    return int(group["weights"]["num_bits"])


def _layer_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale")]


# -- directories -----------------------------------------------------------------------------------

def save_quantized(model: GPT2LMHeadModel, out_dir: Path, details: dict[str, Any],
                   records: dict[str, QuantizedLinear] | None = None) -> Path:
    """Write config.json (with quantization_config) and model.safetensors for a quantized model.

    `records` defaults to the model's QuantLinear layers (dynamic-int8 passes its own)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else {n: m.record() for n, m in quant_linears(model).items()}
    int_quantized = Layout(details["layout"]) in (Layout.INT8, Layout.INT8_DYNAMIC)
    owned = tuple(n + "." for n in records)  # tensors of the quantized layers are written below
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(owned)}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # tied to transformer.wte.weight, restored on load
    for r in records.values():
        tensors.update(layer_tensors(r, int_quantized and r.name != "lm_head", details["sym"]))
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = quant_config(records, details)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def save_quantized_model(model: GPT2LMHeadModel, out_dir: Path) -> Path:
    """Save any model made by compress.quantization.quantize (the method is in its config)."""
    details = model.config.quantization_config["gpt2_edge"]
    layout = Layout(details["layout"])
    if layout is Layout.BITSANDBYTES:
        from compress.quantization.bnb import save_bnb

        return save_bnb(model, out_dir, details)
    if layout is Layout.INT8_DYNAMIC:
        from compress.quantization.dynamic import dynamic_records_of

        return save_quantized(model, out_dir, details, dynamic_records_of(model))
    return save_quantized(model, out_dir, details)


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def read_quantized_linears(model_dir: Path) -> dict[str, QuantizedLinear]:
    """Every quantized linear layer of a saved model dir, by module path (weight-only and W8A8 only;
    bitsandbytes and dynamic-int8 dirs raise UserError: their codes have no MatMulNBits/QDQ form)."""
    model_dir = Path(model_dir)
    details = _details(model_dir)
    if not Layout(details["layout"]).has_handoff:
        raise UserError(f"{model_dir}: {details['method']} models ({details['layout']}) have no MatMulNBits/QDQ "
                        "form; quantize with a method that exports (docs/quantization.md) to export")
    qc = read_quant_config(model_dir)
    tensors = _read_tensors(model_dir)
    out = {}
    for name in _layer_names(tensors):
        local = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        out[name] = layer_record(name, local, _bits_of(qc, name))
    return out


def load_quantized(model_dir: Path) -> GPT2LMHeadModel:
    """Rebuild a quantized GPT-2 from its directory (fp32 everywhere except the quantized layers)."""
    model_dir = Path(model_dir)
    details = _details(model_dir)
    layout = Layout(details["layout"])
    if layout is Layout.BITSANDBYTES:
        from compress.quantization.bnb import load_bnb

        return load_bnb(model_dir)
    qc = read_quant_config(model_dir)
    config_dict = json.loads((model_dir / "config.json").read_text())
    config_dict.pop("quantization_config")
    model = GPT2LMHeadModel(GPT2Config.from_dict(config_dict))
    tensors = _read_tensors(model_dir)
    names = _layer_names(tensors)
    records = {}
    for name in names:
        local = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
        records[name] = layer_record(name, local, _bits_of(qc, name))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected = {f"{n}.{p}" for n in names for p in ("weight", "bias")} | {"lm_head.weight"}
    if unexpected or set(missing) - expected:
        raise UserError(f"{model_dir}: weights do not match config.json "
                        f"(missing {sorted(set(missing) - expected)[:3]}, unexpected {unexpected[:3]})")
    model.config.quantization_config = {"gpt2_edge": details}  # so that save_model writes it back
    if layout is Layout.INT8_DYNAMIC:
        from compress.quantization.dynamic import install_dynamic

        return install_dynamic(model, records).eval()
    if config_dict.get("tie_word_embeddings", True):
        model.tie_weights()
    return install(model, records).eval()
