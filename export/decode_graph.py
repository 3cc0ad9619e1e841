"""A second ONNX graph of GPT-2 for ONNX Runtime CPU decode: fused attention over a shared KV buffer.

model.onnx (export.onnx) is the optimum trace: standard ops, TensorRT's input, and every call
concatenates the past with the new keys and returns the whole cache. This graph is written from the
weights with onnx.helper instead, GPT-2 on one screen:

    h = wte[input_ids] + wpe[position_ids]                               (B, S, E)
    for each block:  x = ln_1(h); qkv = x @ c_attn + b                   (B, S, 3E), [q | k | v]
                     a = GroupQueryAttention(qkv, past_key, past_value)  (B, S, E), causal
                     h = h + a @ c_proj + b
                     h = h + gelu(ln_2(h) @ c_fc + b) @ mlp.c_proj + b
    logits = ln_f(h)[:, -logits_to_keep:] @ head                         (B, keep, V); keep 0 = all

    input_ids, position_ids   int64 (B, S)
    seqlens_k                 int32 (B,)   total length - 1 (past + S - 1), the same for every row
    total_sequence_length     int32 ()     past + S
    logits_to_keep            int64 (1,)   the last positions to score (0: every position)
    past_key.{i}, past_value.{i}      fp32 (B, n_head, capacity, head_dim)
 -> logits, present_key.{i}, present_value.{i} (the same buffers: bind them to the past's OrtValues
    and ORT writes the new positions in place, `past_present_share_buffer`)

com.microsoft.GroupQueryAttention with kv_num_heads == num_heads is plain multi-head attention, and
c_attn's output is exactly its packed QKV layout. It takes no padding mask: rows are unpadded
(export.ort_decode_runner refuses a padded attention_mask). Not TensorRT-parsable (contrib ops).

The weight MatMuls carry the torch exporter's node names ('/transformer/h.0/attn/c_attn/MatMul',
'/lm_head/MatMul'), so the passes of model.onnx (export.onnx_quant, export.tied_embedding) apply as
they are; ONNX Runtime's session-time optimizer fuses SkipLayerNorm and the bias Adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx import LOGITS
from export.passes import MS_DOMAIN

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

DECODE_FILE = "model_decode.onnx"
PAST = "past_{kind}.{layer}"  # kind: key | value
PRESENT = "present_{kind}.{layer}"
# GPT-2 activations -> (op, domain); "gelu_new" is the tanh approximation (FastGelu's formula)
ACTIVATIONS = {"gelu_new": ("FastGelu", MS_DOMAIN), "gelu_pytorch_tanh": ("FastGelu", MS_DOMAIN),
               "gelu_fast": ("FastGelu", MS_DOMAIN), "gelu": ("Gelu", MS_DOMAIN), "relu": ("Relu", "")}


class NotExpressible(ValueError):
    """The model has something this graph does not compute (the step records why and skips it)."""


def unsupported(model: "GPT2LMHeadModel") -> str | None:
    """Why this model cannot be written as the decode graph, or None when it can."""
    from torch import nn
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    if type(model) is not GPT2LMHeadModel:
        return f"{type(model).__name__} is not a stock GPT2LMHeadModel"
    c = model.config
    if c.activation_function not in ACTIVATIONS:
        return f"activation {c.activation_function!r} has no op here"
    if c.reorder_and_upcast_attn or c.add_cross_attention:
        return "reorder_and_upcast_attn / cross-attention are not written"
    for i, block in enumerate(model.transformer.h):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            if type(block.get_submodule(name)) is not Conv1D:
                return f"transformer.h.{i}.{name} is a {type(block.get_submodule(name)).__name__}, not Conv1D"
    if type(model.lm_head) is not nn.Linear or model.lm_head.bias is not None:
        return f"lm_head is a {type(model.lm_head).__name__} (with bias: {model.lm_head.bias is not None}), " \
               "not a bias-free Linear"
    return None


class _Graph:
    """Nodes and initializers being written; names follow the torch exporter's module paths."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def linear(self, x: str, path: str, weight, bias) -> str:
        """x @ W + b as MatMul + Add: the quantizers replace the MatMul, named like the exporter's."""
        module = path.strip("/").replace("/", ".")  # '/transformer/h.0/attn/c_attn' -> 'transformer.h.0.attn.c_attn'
        w = self.const(f"{module}.weight", weight.detach().float().numpy())  # (in, out)
        y = self.op("MatMul", [x, w], f"{path}/MatMul")[0]
        return self.op("Add", [y, self.const(f"{module}.bias", bias.detach().float().numpy())], f"{path}/Add")[0]

    def layer_norm(self, x: str, path: str, ln) -> str:
        module = path.strip("/").replace("/", ".")
        w = self.const(f"{module}.weight", ln.weight.detach().float().numpy())
        b = self.const(f"{module}.bias", ln.bias.detach().float().numpy())
        return self.op("LayerNormalization", [x, w, b], f"{path}/LayerNormalization", axis=-1,
                       epsilon=float(ln.eps))[0]


def build_decode_graph(model: "GPT2LMHeadModel", opset: int = 18) -> onnx.ModelProto:
    """The decode graph of `model` (fp32). Raises NotExpressible with the reason `unsupported` gives."""
    why = unsupported(model)
    if why:
        raise NotExpressible(why)
    c = model.config
    E, N = c.n_embd, c.n_head
    H = E // N
    g = _Graph()
    t = model.transformer

    tok = g.op("Gather", [g.const("transformer.wte.weight", t.wte.weight.detach().float().numpy()), "input_ids"],
               "/transformer/wte/Gather")[0]
    pos = g.op("Gather", [g.const("transformer.wpe.weight", t.wpe.weight.detach().float().numpy()), "position_ids"],
               "/transformer/wpe/Gather")[0]
    h = g.op("Add", [tok, pos], "/transformer/Add")[0]  # (B, S, E)
    act, act_domain = ACTIVATIONS[c.activation_function]
    for i, block in enumerate(t.h):
        p = f"/transformer/h.{i}"  # the torch exporter's node path of block i
        x = g.layer_norm(h, f"{p}/ln_1", block.ln_1)
        qkv = g.linear(x, f"{p}/attn/c_attn", block.attn.c_attn.weight, block.attn.c_attn.bias)  # (B, S, 3E)
        scale = (1 / H ** 0.5 if c.scale_attn_weights else 1.0) / (i + 1 if c.scale_attn_by_inverse_layer_idx else 1)
        past = [PAST.format(kind=kind, layer=i) for kind in ("key", "value")]
        a = g.op("GroupQueryAttention", [qkv, "", "", *past, "seqlens_k", "total_sequence_length"],
                 f"{p}/attn/GroupQueryAttention", n_out=3, domain=MS_DOMAIN, num_heads=N, kv_num_heads=N,
                 scale=float(scale))[0]  # (B, S, E)
        g.nodes[-1].output[1:] = [PRESENT.format(kind=kind, layer=i) for kind in ("key", "value")]
        a = g.linear(a, f"{p}/attn/c_proj", block.attn.c_proj.weight, block.attn.c_proj.bias)
        h = g.op("Add", [h, a], f"{p}/Add")[0]
        x = g.layer_norm(h, f"{p}/ln_2", block.ln_2)
        x = g.linear(x, f"{p}/mlp/c_fc", block.mlp.c_fc.weight, block.mlp.c_fc.bias)  # (B, S, n_inner)
        x = g.op(act, [x], f"{p}/mlp/act/{act}", domain=act_domain)[0]
        x = g.linear(x, f"{p}/mlp/c_proj", block.mlp.c_proj.weight, block.mlp.c_proj.bias)
        h = g.op("Add", [h, x], f"{p}/Add_1")[0]
    h = g.layer_norm(h, "/transformer/ln_f", t.ln_f)
    # The head scores only the last `logits_to_keep` positions (Slice starts at -keep; keep 0 = all).
    start = g.op("Neg", ["logits_to_keep"], "/lm_head/Neg")[0]
    h = g.op("Slice", [h, start, g.const("/lm_head/slice_end", np.array([2 ** 62], np.int64)),
                       g.const("/lm_head/slice_axis", np.array([1], np.int64))], "/lm_head/Slice")[0]  # (B, keep, E)
    head_w = model.lm_head.weight.detach().float().numpy().T  # (E, V); a tied head: wte^T, shared later
    g.op("MatMul", [h, g.const("lm_head.weight_kn", head_w)], "/lm_head/MatMul")
    g.nodes[-1].output[0] = LOGITS

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    cache = ["batch", N, "capacity", H]
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "sequence"]),
              helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", i32, []),
              helper.make_tensor_value_info("logits_to_keep", i64, [1])]
    outputs = [helper.make_tensor_value_info(LOGITS, f32, ["batch", "kept", c.vocab_size])]
    for i in range(c.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(PAST.format(kind=kind, layer=i), f32, cache))
            outputs.append(helper.make_tensor_value_info(PRESENT.format(kind=kind, layer=i), f32, cache))
    graph = helper.make_graph(g.nodes, "gpt2_decode", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                             producer_name="gpt2-edge export.decode_graph")


def describe_decode_io(model: onnx.ModelProto) -> dict:
    """io.json's entry for the decode graph: its own inputs, outputs and how to drive it."""
    from export.onnx import _value_info

    n_layer = sum(1 for v in model.graph.input if v.name.startswith("past_key."))
    first = next(v for v in model.graph.input if v.name == PAST.format(kind="key", layer=0))
    dims = first.type.tensor_type.shape.dim
    return {
        "file": DECODE_FILE,
        "runtime": "onnxruntime CPU (com.microsoft GroupQueryAttention; not TensorRT-parsable)",
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "kv_cache": {"n_layer": n_layer, "n_head": int(dims[1].dim_value), "head_dim": int(dims[3].dim_value)},
        "notes": ("past_key.{i}/past_value.{i} are preallocated (batch, n_head, capacity, head_dim) buffers; bind "
                  "present_key.{i}/present_value.{i} to the same OrtValues (IO binding) and ORT writes the new "
                  "positions in place. seqlens_k = past + sequence - 1 per row, total_sequence_length = past + "
                  "sequence, position_ids = past .. past + sequence - 1. logits_to_keep = [1] scores the last "
                  "position only, [0] every one. No attention_mask: unpadded rows only (use model.onnx for "
                  "left-padded batches). Driven by export.ort_decode_runner.OrtDecodeRunner."),
    }


def build_for_export(cfg, model: "GPT2LMHeadModel", records: dict) -> tuple[onnx.ModelProto | None, dict]:
    """The decode graph through the quantization passes of model.onnx (export.step.build_graph), or
    (None, {"skipped": why}) for a config it cannot express. `cfg` is the step's ExportConfig (format onnx:
    TensorRT cannot parse the decode graph's contrib ops, so its target writes none)."""
    from export import onnx_quant
    from export.onnx import dequantized_copy

    if cfg.fp16:
        return None, {"skipped": "fp16 is for GPU providers; the decode graph is for ONNX Runtime's CPU provider"}
    source = dequantized_copy(model, records) if records else model.cpu()
    try:
        graph = build_decode_graph(source, max(cfg.opset, 17))  # LayerNormalization is opset 17
    except NotExpressible as e:
        return None, {"skipped": str(e)}
    done: dict = {}
    quant = onnx_quant.graph_quantization(model, records)
    graph = onnx_quant.ort_passes(graph, cfg, quant, done)  # no Python fusions: ORT's session ones do
    done["quantized_ops"] = onnx_quant.quantized_counts(graph)
    return graph, done
