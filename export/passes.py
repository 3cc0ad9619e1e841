"""Graph passes on an exported GPT-2 decoder (onnx.ModelProto), each small and tested on its own.

    gemm_to_matmul        Gemm(x, W, b) -> Add(MatMul(x, W'), b'): ONNX Runtime's MatMulNBits and
                          dynamic-int8 quantizers only take MatMul nodes.
    fold_transposes       Transpose(initializer) -> a transposed initializer. The tied LM head is
                          exported as MatMul(x, Transpose(wte)) when torch does not fold constants;
                          left in place, dynamic int8 quantizes wte and transposes it on every step
                          (decode 3x slower).
    ort_fusions           ONNX Runtime's transformer optimizer (model_type gpt2): SkipLayerNorm,
                          FastGelu, ... where the graph matches its patterns.
    share_tied_embedding  The token lookup reads the LM head's weight (plain or MatMulNBits), so
                          GPT-2's tied matrix is stored once instead of twice (fp32 table + head).
    to_fp16               fp16 weights and activations for GPU targets; inputs/outputs stay fp32.

Every pass edits or returns a ModelProto and reports what it changed, so a step can log it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx import LOGITS

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _attr(node: onnx.NodeProto, name: str, default):
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
        if w_name not in inits or _attr(node, "transA", 0):
            new_nodes.append(node)
            continue
        alpha, beta, trans_b = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0), _attr(node, "transB", 0)
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
    _set_nodes(model, new_nodes)
    return count


def fold_transposes(model: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) by the transposed initializer (e.g. the tied LM head's wte^T)."""
    graph = model.graph
    inits = initializers(model)
    keep, count = [], 0
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = _attr(node, "perm", None) or list(reversed(range(w.ndim)))
            folded = np.ascontiguousarray(np.transpose(w, perm))
            graph.initializer.append(numpy_helper.from_array(folded, node.output[0]))
            count += 1
        else:
            keep.append(node)
    _set_nodes(model, keep)
    return count


def tied_token_gather(model: onnx.ModelProto) -> str | None:
    """Name of the token-embedding Gather whose table is exactly the transpose of the LM head's
    MatMul weight (GPT-2's tied head after fold_transposes), or None when the head is untied."""
    inits = initializers(model)
    head = _producer(model, LOGITS)
    if head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[head.input[1]])  # (K, N)
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and _attr(node, "axis", 0) == 0 and list(table.dims) == [w.shape[1], w.shape[0]] \
                and np.array_equal(numpy_helper.to_array(table), w.T):
            return node.name
    return None


def share_tied_embedding(model: onnx.ModelProto, gather_name: str) -> str:
    """Make the token Gather `gather_name` read the LM head's weight, so the tied matrix is stored once.

    Head MatMul(x, W), W (K, N): the lookup gathers columns of W (a decode step reads K strided values).
    Head MatMulNBits: com.microsoft GatherBlockQuantized over the same packed blocks, scales and zero
    points (the lookup then returns the quantized table, as the head multiplies by it).
    Call it after any quantizer. Returns what it did, or '' when the head is neither (dynamic int8
    keeps both copies)."""
    inits = initializers(model)
    head = _producer(model, LOGITS)
    gather = next((n for n in model.graph.node if n.name == gather_name and n.op_type == "Gather"), None)
    if gather is None:
        return ""
    ids, out, p = gather.input[1], gather.output[0], gather.name
    if head is not None and head.op_type == "MatMul" and head.input[1] in inits:
        n_embd = int(inits[head.input[1]].dims[0])
        new = [  # W[:, ids] is (K, *ids.shape): flatten ids, gather columns, transpose, restore the shape
            helper.make_node("Shape", [ids], [f"{p}/ids_shape"], name=f"{p}/Shape"),
            helper.make_node("Reshape", [ids, f"{p}/flat"], [f"{p}/ids_flat"], name=f"{p}/Flatten"),
            helper.make_node("Gather", [head.input[1], f"{p}/ids_flat"], [f"{p}/cols"], name=f"{p}/FromHead", axis=1),
            helper.make_node("Transpose", [f"{p}/cols"], [f"{p}/rows"], name=f"{p}/Transpose", perm=[1, 0]),
            helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/width"], [f"{p}/out_shape"], name=f"{p}/Concat", axis=0),
            helper.make_node("Reshape", [f"{p}/rows", f"{p}/out_shape"], [out], name=f"{p}/Unflatten"),
        ]
        consts = {"flat": [-1], "width": [n_embd]}
        what = "token lookup reads the head's weight (one fp table)"
    elif head is not None and head.op_type == "MatMulNBits" and _gatherable_nbits(head, inits):
        n_out, bits, block = _attr(head, "N", 0), _attr(head, "bits", 4), _attr(head, "block_size", 0)
        packed = [f"{p}/{name}" for name in ("blocks", "scales")]
        new = [helper.make_node("Reshape", [head.input[1], f"{p}/rows_shape"], [packed[0]], name=f"{p}/ReshapeBlocks"),
               helper.make_node("Reshape", [head.input[2], f"{p}/rows_shape"], [packed[1]], name=f"{p}/ReshapeScales")]
        zeros = [head.input[3]] if len(head.input) > 3 and head.input[3] else []
        new.append(helper.make_node("GatherBlockQuantized", [packed[0], ids, packed[1], *zeros], [out],
                                    name=f"{p}/FromHeadBlocks", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                                    block_size=block, bits=bits))
        consts = {"rows_shape": [n_out, -1]}
        what = f"token lookup reads the head's int{bits} blocks (GatherBlockQuantized)"
    else:
        return ""
    for name, value in consts.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{p}/{name}"))
    nodes = []
    for node in model.graph.node:
        nodes.extend(new if node is gather else [node])
    _set_nodes(model, nodes)  # the Gather's own table is no longer read and goes
    ensure_ms_domain(model)
    return what


def _gatherable_nbits(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """What GatherBlockQuantized can read: constant blocks and scales, no g_idx or bias, and no padded
    last block (K a multiple of block_size; MatMulNBits pads, GatherBlockQuantized would return the pad)."""
    extra = [i for i in node.input[4:] if i]
    whole_blocks = _attr(node, "K", 0) % max(_attr(node, "block_size", 1), 1) == 0
    return not extra and whole_blocks and all(i in inits for i in node.input[1:3])


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def _set_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
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
    same runner drives it. Meant for GPU execution providers; on CPU it runs but is not faster."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)


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
