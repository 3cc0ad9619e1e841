"""Graph passes on an exported GPT-2 decoder (onnx.ModelProto), each small and tested on its own.

    gemm_to_matmul        Gemm(x, W, b) -> Add(MatMul(x, W'), b'): ONNX Runtime's MatMulNBits and
                          dynamic-int8 quantizers only take MatMul nodes.
    fold_transposes       Transpose(initializer) -> a transposed initializer. The tied LM head is
                          exported as MatMul(x, Transpose(wte)) when torch does not fold constants;
                          left in place, dynamic int8 quantizes wte and transposes it on every step
                          (decode 3x slower).
    ort_fusions           ONNX Runtime's transformer optimizer (model_type gpt2): SkipLayerNorm,
                          FastGelu, ... where the graph matches its patterns.
    (tied_embedding.py)   The token lookup reads the LM head's weight, so GPT-2's tied matrix is
                          stored once instead of twice (table + head).
    to_fp16               fp16 weights and activations for GPU targets; inputs/outputs stay fp32.

Every pass edits or returns a ModelProto and reports what it changed, so a step can log it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def node_attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm nodes with constant weights as MatMul (+ Add for the bias). Returns how many.

    alpha and transB are folded into a new weight initializer, beta into the bias; a Gemm whose
    weight is not an initializer (or with transA) is left alone.
    """
    graph = model.graph
    inits = initializers(model)
    taken = set(inits) | {o for n in graph.node for o in n.output}
    new_nodes, count = [], 0
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "Gemm" else None
        if w_name not in inits or node_attr(node, "transA", 0):
            new_nodes.append(node)
            continue
        alpha, beta = node_attr(node, "alpha", 1.0), node_attr(node, "beta", 1.0)
        trans_b = node_attr(node, "transB", 0)
        if alpha != 1.0 or trans_b:
            w = numpy_helper.to_array(inits[w_name])
            w = (w.T if trans_b else w) * np.asarray(alpha, dtype=w.dtype)  # (K, N)
            w_name = _unique(f"{w_name}_kn", taken)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        prefix = node.name.removesuffix("Gemm") if node.name.endswith("Gemm") else f"{node.name}/"
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = _unique(f"{node.output[0]}_matmul", taken) if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{prefix}MatMul"))
        if has_bias:
            b_name = node.input[2]
            if beta != 1.0:
                if b_name not in inits:
                    raise ValueError(f"Gemm {node.name}: beta={beta} with a non-constant bias is not supported")
                b = numpy_helper.to_array(inits[b_name]) * beta
                b_name = _unique(f"{b_name}_beta", taken)
                graph.initializer.append(numpy_helper.from_array(b, b_name))
            new_nodes.append(helper.make_node("Add", [mm_out, b_name], [node.output[0]], name=f"{prefix}Add"))
        count += 1
    set_nodes(model, new_nodes)
    return count


def fold_transposes(model: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) by the transposed initializer (e.g. the tied LM head's wte^T)."""
    graph = model.graph
    inits = initializers(model)
    keep, count = [], 0
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = node_attr(node, "perm", None) or list(reversed(range(w.ndim)))
            folded = np.ascontiguousarray(np.transpose(w, perm))
            graph.initializer.append(numpy_helper.from_array(folded, node.output[0]))
            count += 1
        else:
            keep.append(node)
    set_nodes(model, keep)
    return count


def set_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Replace the graph's nodes, then drop the initializers nothing reads any more."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused_initializers(model)


def remove_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop initializers no node or graph output reads (e.g. a weight replaced by its transpose)."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    # Subgraphs (If/Loop bodies) may read outer initializers too.
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {i for sn in a.g.node for i in sn.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return len(unused)


def ort_fusions(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ONNX Runtime's GPT-2 fusions (Python-level, opt_level 0: nothing provider-specific is baked in).

    Returns the new model and the count of each fused operator it introduced (zeros dropped). With
    transformers 4.57's attention export, Attention itself does not fuse; LayerNorm+residual
    (SkipLayerNormalization) and the tanh GELU (FastGelu) do.
    """
    with keep_root_logging():
        from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(model, model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=0, use_gpu=False)
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    ensure_ms_domain(optimized.model)
    return optimized.model, stats


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute; graph inputs and outputs (ids, KV cache, logits) stay fp32, so the
    same runner drives it. Meant for GPU execution providers; on CPU it runs but is not faster.

    The converter appends the Casts of the kept fp32 inputs at the end of the node list; ONNX Runtime
    sorts nodes itself, but the ONNX spec (and onnx.checker) wants them in topological order, so we sort."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True))
    converted.topological_sort()
    return converted.model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type (for logs and tests)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def ensure_ms_domain(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft opset (contrib ops): ORT runs without it, shape inference does not."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


@contextmanager
def quiet(*names: str):
    """Silence INFO logs of ONNX Runtime's Python tools (one line per node) inside the block.

    onnxruntime.quantization.matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import,
    so the root logger is raised too, and everything is restored afterwards."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in names)]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


@contextmanager
def keep_root_logging():
    """Undo what an import does to the root logger (ORT's quantizer calls logging.basicConfig)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
