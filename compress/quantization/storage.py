"""Save and load quantized GPT-2 directories.

rtn / gptq / smoothquant / dynamic-int8 are written in the compressed-tensors layout (the format that
llm-compressor writes and vLLM loads), described by `quantization_config` in config.json, on the
GPTBigCode form of the model (bigcode_layout.py: GPT-2 with nn.Linear projections, the only form
compressed-tensors decompresses), so stock `AutoModelForCausalLM.from_pretrained(dir)` reads the exact
weights. Each config group names its format, chosen from the layout (bits, sym, activations):

    symmetric weight-only ("pack-quantized"): <layer>.weight_packed int32 [out, in*bits/32] (codes
        packed along the input dim, element k of each 32/bits at bit k*bits, offset 2**(bits-1)),
        <layer>.weight_scale fp32 [out, groups], <layer>.weight_shape int64 [2]
    asymmetric weight-only ("naive-quantized"): <layer>.weight int8 [out, in] (signed codes),
        <layer>.weight_scale, <layer>.weight_zero_point int8 [out, groups] (signed)
    W8A8 ("int-quantized"): <layer>.weight int8 [out, in], <layer>.weight_scale fp32 [out, 1],
        <layer>.input_scale fp32 [1] (static W8A8; dynamic-int8 has none)

Everything else (embeddings, LayerNorms, biases) is fp32 as save_pretrained writes it. A quantized
tied head is stored once: its codes, with `tie_word_embeddings: true` and no `transformer.wte.weight`;
load_model rebuilds the token table from them (quantize_tied_table). Stock loaders cannot (TIED_FORMAT)
and cannot express dynamic-int8 (REFUSED_FORMAT): those groups name a format compressed-tensors
rejects, so from_pretrained raises instead of loading random weights. Our own settings (method,
lm_head, gptq options) sit beside, under quantization_config.gpt2_edge. The methods quantized in the
ONNX graph (ort_graph.py, layout onnx-graph) write every weight fp32 with no config group, and the
quantization_config that names them. bitsandbytes models use
bitsandbytes' serialization instead (see bnb.py). Directories written before the GPTBigCode form
(model_type gpt2, Conv1D row order, packed zero points) still load here.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from compress.errors import UserError
from compress.lowrank.modules import factor_pair_skeleton, lowrank_record
from compress.quantization import bigcode_layout as stock
from compress.quantization.handoff import WEIGHTS_FILE, LinearCodes, read_quant_config
from compress.quantization.module_precision import FLOAT_BITS
from compress.quantization.modules import install, quant_linears
from compress.quantization.registry import Layout

BLOCK_TARGET = r"re:.*\.(c_attn|c_proj|c_fc)$"
# torch.ao dynamic int8 rounds activations as compressed-tensors cannot (reduce_range, asymmetric uint8):
# a format name it does not know makes compressed-tensors (and so transformers) raise instead of loading.
REFUSED_FORMAT = "gpt2-edge-torch-dynamic-int8"
# A tied head stored once (codes only, no token table): transformers 4.57 ties lm_head to wte before
# compressed-tensors decompresses the head into a new Parameter, so the table would stay random.
TIED_FORMAT = "gpt2-edge-tied-head-codes"
TABLE = "transformer.wte.weight"
# A factorized model (compress.lowrank): each projection is two quantized factors (<layer>.down, <layer>.up),
# a form no stock loader builds; the format name makes compressed-tensors raise instead of loading the
# dense layers at random. load_quantized rebuilds the pairs from config.json's gpt2_edge.lowrank ranks.
FACTORS_FORMAT = "gpt2-edge-lowrank-factors"
FACTOR_TARGET = r"re:.*\.(c_attn|c_proj|c_fc)(\.(down|up))?$"  # the projections left dense are in the group too


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

def _weights_scheme(members: list[LinearCodes], sym: bool) -> dict[str, Any]:
    """Weights of one config group: per channel when every layer has one group per row."""
    per_channel = all(r.group_size == r.in_features for r in members)
    return {"num_bits": members[0].bits, "type": "int", "symmetric": sym, "dynamic": False,
            "strategy": "channel" if per_channel else "group",
            "group_size": None if per_channel else members[0].group_size}


def _activations(details: dict[str, Any]) -> str | None:
    """How the block projections' inputs are quantized: None (weight-only), "static" or "dynamic"."""
    return {Layout.INT8: "static", Layout.INT8_DYNAMIC: "dynamic"}.get(Layout(details["layout"]))


def stores_int8(details: dict[str, Any], head: bool) -> bool:
    """Codes stored one per int8 ("int-/naive-quantized"): W8A8 blocks, and asymmetric grids (the packed
    zero points of "pack-quantized" do not load through transformers with compressed-tensors 0.20).
    Else packed into int32 ("pack-quantized")."""
    return (_activations(details) is not None and not head) or not details["sym"]


def _group_format(details: dict[str, Any], head: bool, tied_head: bool, factorized: bool = False) -> str:
    """The compressed-tensors format of one group; one stock loaders reject where they would misread."""
    if head and tied_head:
        return TIED_FORMAT
    if not head and factorized:
        return FACTORS_FORMAT
    if not head and _activations(details) == "dynamic":
        return REFUSED_FORMAT
    if not head and _activations(details) == "static":
        return "int-quantized"
    return "naive-quantized" if stores_int8(details, head) else "pack-quantized"


def _scheme_targets(records: dict[str, LinearCodes], details: dict[str, Any],
                    factorized: bool = False) -> list[tuple[str, list[LinearCodes]]]:
    """(target, records) of each config group: the block projections under one regex and the head, or with
    per-module precision (details["precisions"]) one group per grid naming its modules."""
    blocks = [r for n, r in records.items() if n != "lm_head"]
    head = [records["lm_head"]] if "lm_head" in records else []
    if "precisions" not in details:
        return [(FACTOR_TARGET if factorized else BLOCK_TARGET, blocks), ("lm_head", head)]
    by_grid: dict[tuple[int, int], list[LinearCodes]] = {}
    for r in blocks:
        by_grid.setdefault((r.bits, r.group_size), []).append(r)
    return [("re:^(" + "|".join(re.escape(r.name) for r in rs) + ")$", rs) for rs in by_grid.values()] + \
        [("lm_head", head)]


def _group_targets(qc: dict[str, Any], name: str) -> dict[str, Any]:
    """The config group whose targets match module `name` (as compressed-tensors matches them)."""
    for group in qc["config_groups"].values():
        for t in group["targets"]:
            if t == name or (t.startswith("re:") and re.match(t[3:], name)):
                return group
    raise UserError(f"{name}: no quantization_config group targets it; the checkpoint is inconsistent")


def quant_config(records: dict[str, LinearCodes], details: dict[str, Any],
                 tied_head: bool = False, factorized: bool = False) -> dict[str, Any]:
    """The compressed-tensors quantization_config for these records (one scheme per group, each naming
    its format: compressed-tensors would infer one per module otherwise). Modules kept float by
    per-module precision are listed in `ignore` and stored as fp32 nn.Linear weights, which stock
    loaders read as they are."""
    groups: dict[str, Any] = {}
    ignore = ["transformer." + n for n, p in details.get("precisions", {}).items()
              if p["bits"] == FLOAT_BITS and n != "lm_head"]
    activations = _activations(details)
    for target, members in _scheme_targets(records, details, factorized):
        head = target == "lm_head"
        if not members:
            ignore += ["lm_head"] if head else []
            continue
        key = f"group_{len(groups)}" if not head or "precisions" in details else "group_1"
        scheme = {"targets": [target], "weights": _weights_scheme(members, details["sym"]),
                  "input_activations": None, "output_activations": None,
                  "format": _group_format(details, head, tied_head, factorized)}
        if activations and not head:
            scheme["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor",
                                           "dynamic": activations == "dynamic"}
        groups[key] = scheme
    formats = {g["format"] for g in groups.values()}
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
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
    if qc.get("format") in ("pack-quantized", "naive-quantized"):
        return Layout.PACKED
    acts = qc["config_groups"]["group_0"]["input_activations"]
    return Layout.INT8_DYNAMIC if acts and acts["dynamic"] else Layout.INT8


# -- tensors of one layer --------------------------------------------------------------------------

def layer_tensors(r: LinearCodes, int_quantized: bool, sym: bool) -> dict[str, torch.Tensor]:
    """The on-disk tensors of one quantized layer, keyed by their full names."""
    half = 2 ** (r.bits - 1)
    out: dict[str, torch.Tensor] = {f"{r.name}.weight_scale": r.scales.float().contiguous()}
    if int_quantized:  # int8 stored as is, signed
        out[f"{r.name}.weight"] = (r.q.to(torch.int16) - half).to(torch.int8)
    else:
        out[f"{r.name}.weight_packed"] = pack_int32(r.q, r.bits)
        out[f"{r.name}.weight_shape"] = torch.tensor([r.out_features, r.in_features], dtype=torch.int64)
    if not sym and int_quantized:  # signed, one per group, as the int8 codes
        out[f"{r.name}.weight_zero_point"] = (r.zeros.to(torch.int16) - half).to(torch.int8)
    elif not sym:  # packed along the output dim
        out[f"{r.name}.weight_zero_point"] = pack_int32(r.zeros.t(), r.bits).t().contiguous()
    if r.input_scale is not None:
        out[f"{r.name}.input_scale"] = torch.tensor([r.input_scale], dtype=torch.float32)
    if r.bias is not None:
        out[f"{r.name}.bias"] = r.bias.float().contiguous()
    return out


def layer_record(name: str, t: dict[str, torch.Tensor], bits: int) -> LinearCodes:
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
    if "weight_zero_point" in t and t["weight_zero_point"].dtype == torch.int8:
        zeros = (t["weight_zero_point"].to(torch.int16) + half).to(torch.uint8)
    elif "weight_zero_point" in t:  # packed (pack-quantized)
        zeros = unpack_int32(t["weight_zero_point"].t(), bits, out_f).t().contiguous()
    else:
        zeros = torch.full((out_f, n_groups), half, dtype=torch.uint8)
    input_scale = float(t["input_scale"].reshape(-1)[0]) if "input_scale" in t else None
    return LinearCodes(name=name, bits=bits, group_size=in_f // n_groups, q=q, scales=scales,
                           zeros=zeros, bias=t.get("bias"), input_scale=input_scale)


def _bits_of(qc: dict[str, Any], name: str) -> int:
    return int(_group_targets(qc, name)["weights"]["num_bits"])


def _layer_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale")]


# -- directories -----------------------------------------------------------------------------------

def _reorder_qkv(r: LinearCodes, n_embd: int, n_head: int, to_stock: bool) -> LinearCodes:
    """c_attn's rows between GPT-2 and GPTBigCode order (other layers are already [out, in] in both)."""
    if not stock.is_qkv(r.name):
        return r
    rows = partial(stock.rows_to_stock if to_stock else stock.rows_to_gpt2, n_embd=n_embd, n_head=n_head)
    return replace(r, q=rows(r.q), scales=rows(r.scales), zeros=rows(r.zeros),
                   bias=None if r.bias is None else rows(r.bias))


def table_is_the_head(model: GPT2LMHeadModel, records: dict[str, LinearCodes]) -> bool:
    """The token table holds exactly the quantized head's dequantized codes (a quantized tied head), so
    the codes alone store both."""
    head = records.get("lm_head")
    wte = model.transformer.wte.weight
    return head is not None and wte.shape == head.q.shape and torch.equal(wte.detach().cpu(), head.dequantize())


def save_quantized(model: GPT2LMHeadModel, out_dir: Path, details: dict[str, Any],
                   records: dict[str, LinearCodes] | None = None) -> Path:
    """Write config.json (with quantization_config) and model.safetensors for a quantized model.

    `records` defaults to the model's QuantLinear layers (dynamic-int8 passes its own)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else {n: m.record() for n, m in quant_linears(model).items()}
    E, H = model.config.n_embd, model.config.n_head
    owned = tuple(n + "." for n in records)  # tensors of the quantized layers are written below
    tensors = {k: stock.fp32_tensor_to_stock(k, v.detach().cpu(), E, H).contiguous()
               for k, v in model.state_dict().items() if not k.startswith(owned)}
    tied_head = table_is_the_head(model, records)
    if tied_head:
        tensors.pop(TABLE)  # rebuilt from the head's codes on load
    if model.config.tie_word_embeddings or tied_head:
        tensors.pop("lm_head.weight", None)
    for r in records.values():
        as_int8 = stores_int8(details, head=r.name == "lm_head")
        tensors.update(layer_tensors(_reorder_qkv(r, E, H, to_stock=True), as_int8, details["sym"]))
    config = model.config.to_dict()
    config["tie_word_embeddings"] = model.config.tie_word_embeddings or tied_head
    try:
        config = stock.stock_config(config)
    except ValueError as e:
        raise UserError(f"{out_dir}: {e}") from None
    config["quantization_config"] = quant_config(records, details, tied_head, lowrank_record(config) is not None)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
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
    if layout is Layout.ONNX_GRAPH:  # fp32 weights: the ONNX export quantizes (ort_graph.py)
        return save_quantized(model, out_dir, details, records={})
    return save_quantized(model, out_dir, details)


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _gpt2_config_dict(model_dir: Path) -> dict[str, Any]:
    """config.json as a GPT-2 config dict (either layout), without its quantization_config."""
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("quantization_config")
    return stock.gpt2_config(config) if config.get("model_type") == stock.STOCK_MODEL_TYPE else config


def write_gpt2_config(model_dir: Path, out_dir: Path) -> None:
    """Copy config.json, in its GPT-2 form (model_type gpt2) where it was stored as GPTBigCode: what
    sits beside an ONNX export describes the GPT-2 graph (optimum reads model_type from it)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    from compress.config_json import with_n_ctx

    if stock.is_quantized_gpt2(config):
        config = stock.gpt2_config(config)
    config = with_n_ctx(config)  # llama.cpp's converter reads n_ctx
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _records(model_dir: Path, tensors: dict[str, torch.Tensor]) -> dict[str, LinearCodes]:
    """Pop every quantized layer's tensors from `tensors`; records in GPT-2 row order."""
    qc = read_quant_config(model_dir)
    bigcode = json.loads((model_dir / "config.json").read_text()).get("model_type") == stock.STOCK_MODEL_TYPE
    config = _gpt2_config_dict(model_dir)
    records = {}
    for name in _layer_names(tensors):
        local = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
        r = layer_record(name, local, _bits_of(qc, name))
        records[name] = _reorder_qkv(r, config["n_embd"], config["n_head"], to_stock=False) if bigcode else r
    if bigcode:  # fp32 projections (none today: every method quantizes all four) back to Conv1D
        for k in list(tensors):
            tensors[k] = stock.fp32_tensor_to_gpt2(k, tensors[k], config["n_embd"], config["n_head"])
    return records


def codes_in_dir(model_dir: Path) -> bool:
    """False for a quantized dir whose weights are fp32 (methods quantized in the ONNX graph): nothing to
    hand off; the exporter reads the method from the model's config."""
    return Layout(_details(Path(model_dir))["layout"]) is not Layout.ONNX_GRAPH


def read_linear_codes(model_dir: Path) -> dict[str, LinearCodes]:
    """Every quantized linear layer of a saved model dir, by module path (weight-only and W8A8 only;
    bitsandbytes and dynamic-int8 dirs raise UserError: their codes have no MatMulNBits/QDQ form)."""
    model_dir = Path(model_dir)
    details = _details(model_dir)
    if not Layout(details["layout"]).has_handoff:
        raise UserError(f"{model_dir}: {details['method']} models ({details['layout']}) have no MatMulNBits/QDQ "
                        "form; quantize with a method that exports (docs/quantization.md) to export")
    return _records(model_dir, _read_tensors(model_dir))


def load_quantized(model_dir: Path) -> GPT2LMHeadModel:
    """Rebuild a quantized GPT-2 from its directory (fp32 everywhere except the quantized layers)."""
    model_dir = Path(model_dir)
    details = _details(model_dir)
    layout = Layout(details["layout"])
    if layout is Layout.BITSANDBYTES:
        from compress.quantization.bnb import load_bnb

        return load_bnb(model_dir)
    config_dict = _gpt2_config_dict(model_dir)
    model = GPT2LMHeadModel(GPT2Config.from_dict(config_dict))
    if lowrank_record(config_dict) is not None:  # two quantized factors per factorized projection
        factor_pair_skeleton(model, lowrank_record(config_dict)["ranks"])
    tensors = _read_tensors(model_dir)
    records = _records(model_dir, tensors)
    names = list(records)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected = {f"{n}.{p}" for n in names for p in ("weight", "bias")} | {"lm_head.weight"}
    if "lm_head" in records and config_dict.get("tie_word_embeddings", True):
        expected.add(TABLE)  # stored once, as the head's codes
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
