"""Export a GPT-2 to one ONNX decoder graph with KV cache, serving both prefill and decode.

We use optimum-onnx's exporter (task text-generation-with-past), the ecosystem's GPT-2 exporter: it
declares the inputs, outputs and dynamic axes once, the optimum way:

    input_ids                 int64 [batch, sequence]
    attention_mask            int64 [batch, past + sequence]   (0 marks left padding)
    position_ids              int64 [batch, sequence]
    past_key_values.{i}.key   fp32  [batch, n_head, past, head_dim]   (past = 0 for prefill)
    past_key_values.{i}.value fp32  [batch, n_head, past, head_dim]
 -> logits                    fp32  [batch, sequence, vocab]
    present.{i}.key / .value  fp32  [batch, n_head, past + sequence, head_dim]

One graph: a prefill is a call with past length 0, a decode step a call with sequence length 1.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from onnx import TensorProto


if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TASK = "text-generation-with-past"
LOGITS = "logits"
PAST_KEY = "past_key_values.{layer}.{kind}"
PRESENT_KEY = "present.{layer}.{kind}"
PROTOBUF_LIMIT = 1_800_000_000  # bytes; above this weights go to an external data file (2 GB protobuf cap)


class _TiedWeightNotes(logging.Filter):
    """Drops optimum's 'Found different candidate ONNX initializers (likely duplicate) for the tied
    weights' and the lines listing them: optimum logs them whenever torch folded the tied head into its
    own initializer, and then ties the two (the head reads Transpose(wte); tests/export/test_onnx.py
    checks that it did). Its real failures ('Could not find ...', '... ignored') still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Found different candidate ONNX initializers"):
            return False
        return not (msg.startswith("\t") and "ignored" not in msg)


def export_decoder(model, opset: int) -> onnx.ModelProto:
    """Trace `model` (a GPT2LMHeadModel, fp32) with optimum into one KV-cache decoder graph.

    With accelerate installed, optimum's tied-weight deduplication runs (without it optimum says it
    skipped it): a tied head then reads Transpose(wte) instead of a second copy of the table."""
    notes = _TiedWeightNotes()
    optimum_log = logging.getLogger("optimum")  # optimum.onnx logs on its library logger
    optimum_log.addFilter(notes)
    with tempfile.TemporaryDirectory(prefix="gpt2-edge-onnx-") as tmp:
        try:
            _trace(model, tmp, opset)
        finally:
            optimum_log.removeFilter(notes)
        path = Path(tmp) / "model.onnx"
        if not path.is_file():
            raise RuntimeError(f"optimum wrote no model.onnx (files: {sorted(p.name for p in Path(tmp).iterdir())})")
        return onnx.load(path)  # loads external data too, if optimum wrote any


def _trace(model, out_dir: str, opset: int) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        # The tracer warns about every Python branch in transformers' mask code; the graph is
        # checked against torch after export instead (validation.json).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        # do_validation=False: we validate ourselves, against the model the plan actually holds.
        onnx_export_from_model(model.eval(), out_dir, task=TASK, opset=opset, do_validation=False)


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write the model; weights go to `<name>.data` beside it only when over the protobuf limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(model, path, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if external else None)
    return path


_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64",
           TensorProto.INT32: "int32", TensorProto.BOOL: "bool"}


def _value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    return {"name": v.name, "dtype": _DTYPES.get(t.elem_type, TensorProto.DataType.Name(t.elem_type).lower()),
            "dims": [d.dim_param or d.dim_value for d in t.shape.dim]}


def kv_layout(model: onnx.ModelProto) -> dict[str, int] | None:
    """n_layer, n_head and head_dim of the KV-cache inputs, or None when the graph has none."""
    inputs = {v.name: _value_info(v) for v in model.graph.input}
    n_layer = 0
    while PAST_KEY.format(layer=n_layer, kind="key") in inputs:
        n_layer += 1
    if n_layer == 0:
        return None
    dims = inputs[PAST_KEY.format(layer=0, kind="key")]["dims"]  # [batch, n_head, past, head_dim]
    return {"n_layer": n_layer, "n_head": int(dims[1]), "head_dim": int(dims[3])}


def describe_io(model: onnx.ModelProto) -> dict[str, Any]:
    """io.json: what a runtime needs to drive the graph (names, dtypes, dims, cache layout)."""
    return {
        "format": "onnx",
        "task": TASK,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "kv_cache": kv_layout(model),
        "past_names": PAST_KEY.format(layer="{i}", kind="{key|value}"),
        "present_names": PRESENT_KEY.format(layer="{i}", kind="{key|value}"),
        "notes": ("prefill: past length 0; decode: sequence length 1. attention_mask covers past + "
                  "sequence (0 = left padding); position_ids = cumsum(mask) - 1 at the new positions."),
    }


def dequantized_copy(model, records: dict) -> "torch.nn.Module":
    """A stock GPT2LMHeadModel whose quantized linears hold their dequantized codes, for tracing.

    The quantized torch model (QuantLinear layers) would trace its dequantization into the graph;
    we trace plain fp32 layers instead and then swap in MatMulNBits / QDQ from the integers
    (export.onnx_quant), checking each swapped weight against these dequantized values.
    """
    import copy

    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model).cpu().float()
    for name, ql in records.items():
        w = ql.dequantize()  # (out, in)
        if name == "lm_head":
            layer = nn.Linear(ql.in_features, ql.out_features, bias=ql.bias is not None)
            layer.weight = nn.Parameter(w.contiguous())
        else:  # GPT-2's Conv1D stores (in, out) and always has a bias
            layer = Conv1D(ql.out_features, ql.in_features)
            layer.weight = nn.Parameter(w.t().contiguous())
        if ql.bias is not None:
            layer.bias = nn.Parameter(ql.bias.float().clone())
        elif isinstance(layer, Conv1D):
            nn.init.zeros_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    if "lm_head" in records:
        model.config.tie_word_embeddings = False  # the head has its own (quantized) weight
    return model.eval()
