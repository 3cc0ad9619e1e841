"""Store GPT-2's tied embedding once in an exported graph.

GPT-2's token table and LM head are one matrix (V, E), but the trace stores it twice: the token
Gather reads `wte` and the head multiplies by its folded transpose `wte^T` (passes.fold_transposes),
and a quantizer then rewrites only the head. After every quantizer has run, the lookup is rewritten
to read whatever the head now holds:

    head MatMul(x, W), W (E, V) fp32/fp16   Gather of W's columns, transposed back to (.., E)
    head MatMulNBits (int4/int8 blocks)      com.microsoft GatherBlockQuantized over the same blocks,
                                             scales and zero points
    head MatMulInteger (dynamic int8)        Gather of the int8 columns, DequantizeLinear, transposed

A quantized head makes the lookup return the quantized table, as the head multiplies by it. The tie
is decided on the fp32 graph, before any quantizer, by exact equality (tied_token_gather), so a head
the quantize step quantized on its own (lm_head: int4, untied in torch too) is never merged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx import LOGITS
from export.passes import MS_DOMAIN, ensure_ms_domain, initializers, node_attr, set_nodes


def tied_token_gather(model: onnx.ModelProto) -> str | None:
    """Name of the token Gather whose table is exactly the transpose of the LM head's MatMul weight,
    or None when the head is untied (call on the fp32 graph, after passes.fold_transposes)."""
    inits = initializers(model)
    head = _producer(model, LOGITS)
    if head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[head.input[1]])  # (E, V)
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and node_attr(node, "axis", 0) == 0 and list(table.dims) == [w.shape[1], w.shape[0]] \
                and np.array_equal(numpy_helper.to_array(table), w.T):
            return node.name
    return None


def share_tied_embedding(model: onnx.ModelProto, gather_name: str) -> str:
    """Rewrite the token Gather `gather_name` to read the LM head's weight; its own table goes.

    Returns what it did, or '' when the head has none of the forms in the module docstring (then
    both copies stay)."""
    inits = initializers(model)
    gather = next((n for n in model.graph.node if n.name == gather_name and n.op_type == "Gather"), None)
    head = _producer(model, LOGITS)
    if gather is None or head is None:
        return ""
    int8 = _dynamic_int8_weight(model, head, inits)
    if head.op_type == "MatMul" and head.input[1] in inits:
        new, consts = _column_lookup(gather, head.input[1], inits)
        what = "token lookup reads the head's weight (one fp table)"
    elif head.op_type == "MatMulNBits" and _gatherable_nbits(head, inits):
        new, consts = _block_lookup(gather, head)
        what = f"token lookup reads the head's int{node_attr(head, 'bits', 4)} blocks (GatherBlockQuantized)"
    elif int8 is not None:
        new, consts = _column_lookup(gather, int8[0], inits, dequantize=int8[1:])
        what = "token lookup reads the head's int8 weight (DequantizeLinear)"
    else:
        return ""
    for name, value in consts.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{gather.name}/{name}"))
    nodes = []
    for node in model.graph.node:
        nodes.extend(new if node is gather else [node])
    set_nodes(model, nodes)  # the Gather's own table is no longer read and goes
    ensure_ms_domain(model)
    return what


def _column_lookup(gather: onnx.NodeProto, weight: str, inits: dict[str, onnx.TensorProto],
                   dequantize: tuple[str, str] | None = None) -> tuple[list[onnx.NodeProto], dict]:
    """W[:, ids] of the head's (E, V) weight, as (*ids.shape, E). A decode step reads E strided values;
    a 128-token prefill at E = 384 took ~0.3 ms more than a row Gather on the bench CPU."""
    ids, out, p = gather.input[1], gather.output[0], gather.name
    cols = f"{p}/cols"
    nodes = [
        helper.make_node("Shape", [ids], [f"{p}/ids_shape"], name=f"{p}/Shape"),
        helper.make_node("Reshape", [ids, f"{p}/flat"], [f"{p}/ids_flat"], name=f"{p}/Flatten"),
        helper.make_node("Gather", [weight, f"{p}/ids_flat"], [cols], name=f"{p}/FromHead", axis=1),  # (E, M)
    ]
    if dequantize is not None:  # int8 columns with the head's per-tensor scale and zero point
        nodes.append(helper.make_node("DequantizeLinear", [cols, *dequantize], [f"{p}/cols_fp"], name=f"{p}/Dequantize"))
        cols = f"{p}/cols_fp"
    nodes += [
        helper.make_node("Transpose", [cols], [f"{p}/rows"], name=f"{p}/Transpose", perm=[1, 0]),  # (M, E)
        helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/width"], [f"{p}/out_shape"], name=f"{p}/Concat", axis=0),
        helper.make_node("Reshape", [f"{p}/rows", f"{p}/out_shape"], [out], name=f"{p}/Unflatten"),
    ]
    return nodes, {"flat": [-1], "width": [int(inits[weight].dims[0])]}


def _block_lookup(gather: onnx.NodeProto, head: onnx.NodeProto) -> tuple[list[onnx.NodeProto], dict]:
    """GatherBlockQuantized over the head's MatMulNBits blocks (V, nb, blob) seen as rows (V, E*bits/8)."""
    ids, out, p = gather.input[1], gather.output[0], gather.name
    blocks, scales = f"{p}/blocks", f"{p}/scales"
    zeros = [head.input[3]] if len(head.input) > 3 and head.input[3] else []  # same packing in both ops
    nodes = [
        helper.make_node("Reshape", [head.input[1], f"{p}/rows_shape"], [blocks], name=f"{p}/ReshapeBlocks"),
        helper.make_node("Reshape", [head.input[2], f"{p}/rows_shape"], [scales], name=f"{p}/ReshapeScales"),
        helper.make_node("GatherBlockQuantized", [blocks, ids, scales, *zeros], [out], name=f"{p}/FromHeadBlocks",
                         domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, bits=node_attr(head, "bits", 4),
                         block_size=node_attr(head, "block_size", 0)),
    ]
    return nodes, {"rows_shape": [node_attr(head, "N", 0), -1]}


def _gatherable_nbits(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """What GatherBlockQuantized can read: constant blocks and scales, no g_idx or bias, and no padded
    last block (K a multiple of block_size; MatMulNBits pads, GatherBlockQuantized would return the pad)."""
    extra = [i for i in node.input[4:] if i]
    whole_blocks = node_attr(node, "K", 0) % max(node_attr(node, "block_size", 1), 1) == 0
    return not extra and whole_blocks and all(i in inits for i in node.input[1:3])


def _dynamic_int8_weight(model: onnx.ModelProto, head: onnx.NodeProto,
                         inits: dict[str, onnx.TensorProto]) -> tuple[str, str, str] | None:
    """(int8 weight, scale, zero point) of a head quantize_dynamic wrote, per tensor:
    logits = Mul(Cast(MatMulInteger(x_q, W_q, x_zero, W_zero)), Mul(x_scale, W_scale))."""
    if head.op_type != "Mul":
        return None
    producers = {o: n for n in model.graph.node for o in n.output}
    parents = [producers.get(i) for i in head.input]
    cast = next((n for n in parents if n is not None and n.op_type == "Cast"), None)
    scale_mul = next((n for n in parents if n is not None and n.op_type == "Mul"), None)
    matmul = producers.get(cast.input[0]) if cast is not None else None
    if matmul is None or matmul.op_type != "MatMulInteger" or scale_mul is None or len(matmul.input) < 4:
        return None
    weight, zero = matmul.input[1], matmul.input[3]
    scale = next((i for i in scale_mul.input if i in inits), None)
    per_tensor = scale is not None and zero in inits and int(np.prod(inits[scale].dims)) == 1
    return (weight, scale, zero) if weight in inits and per_tensor else None


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)
