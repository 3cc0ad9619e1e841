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
is decided on the traced graph, before any quantizer, by exact equality (tied_token_gather): a head
the quantize step quantized counts as tied, since that step makes the torch lookup read the same
dequantized codes (compress.quantization.modules.quantize_tied_table); an untied model never does.
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
    head = next((n for n in model.graph.node if LOGITS in n.output), None)
    if head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[head.input[1]])  # (E, V)
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or node_attr(node, "axis", 0) != 0 or list(table.dims) != [w.shape[1], w.shape[0]]:
            continue
        if np.array_equal(numpy_helper.to_array(table), w.T):
            return node.name
    return None


def share_tied_embedding(model: onnx.ModelProto, gather_name: str) -> str:
    """Rewrite the token Gather `gather_name` to read the LM head's weight; its own table goes.

    Returns what it did, or '' when the head has none of the forms in the module docstring (then
    both copies stay)."""
    inits = initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    gather = next((n for n in model.graph.node if n.name == gather_name and n.op_type == "Gather"), None)
    head = producers.get(LOGITS)
    if gather is None or head is None:
        return ""
    if head.op_type == "MatMul" and head.input[1] in inits:
        new, consts = _column_lookup(gather, head.input[1], inits)
        what = "token lookup reads the head's weight (one fp table)"
    elif head.op_type == "MatMulNBits" and _gatherable_nbits(head, inits):
        new, consts = _block_lookup(gather, head)
        what = f"token lookup reads the head's int{_attrs(head).get('bits', 4)} blocks (GatherBlockQuantized)"
    elif (int8 := _dynamic_int8_weight(head, producers, inits)) is not None:
        weight, scale, zero = int8
        new, consts = _column_lookup(gather, weight, inits, dequantize=(scale, zero))
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
        nodes.append(helper.make_node("DequantizeLinear", [cols, *dequantize], [f"{p}/cols_fp"],
                                      name=f"{p}/Dequantize"))
        cols = f"{p}/cols_fp"
    nodes += [
        helper.make_node("Transpose", [cols], [f"{p}/rows"], name=f"{p}/Transpose", perm=[1, 0]),  # (M, E)
        helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/width"], [f"{p}/out_shape"], name=f"{p}/Concat",
                         axis=0),
        helper.make_node("Reshape", [f"{p}/rows", f"{p}/out_shape"], [out], name=f"{p}/Unflatten"),
    ]
    return nodes, {"flat": [-1], "width": [int(inits[weight].dims[0])]}


def _block_lookup(gather: onnx.NodeProto, head: onnx.NodeProto) -> tuple[list[onnx.NodeProto], dict]:
    """GatherBlockQuantized over the head's MatMulNBits blocks (V, nb, blob) seen as rows (V, E*bits/8);
    scales and zero points (packed the same way in both ops) reshaped to (V, -1), as it wants them."""
    ids, out, p = gather.input[1], gather.output[0], gather.name
    attrs = _attrs(head)
    has_zeros = len(head.input) > 3 and head.input[3] != ""
    sources = [head.input[1], head.input[2], *([head.input[3]] if has_zeros else [])]  # blocks, scales, zeros
    rows = [f"{p}/{name}" for name in ("blocks", "scales", "zeros")][:len(sources)]
    nodes = [helper.make_node("Reshape", [src, f"{p}/rows_shape"], [dst], name=f"{dst}/Reshape")
             for src, dst in zip(sources, rows)]
    nodes.append(helper.make_node("GatherBlockQuantized", [rows[0], ids, *rows[1:]], [out],
                                  name=f"{p}/FromHeadBlocks", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                                  bits=attrs.get("bits", 4), block_size=attrs["block_size"]))
    return nodes, {"rows_shape": [attrs["N"], -1]}


def _gatherable_nbits(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """What GatherBlockQuantized can read: constant uint8 blocks, scales and zero points, no g_idx or
    bias, and no padded last block (MatMulNBits pads K to whole blocks; the lookup would return the pad)."""
    attrs = _attrs(node)
    consts = [i for i in node.input[1:4] if i]
    return (not any(node.input[4:]) and attrs["K"] % attrs["block_size"] == 0 and all(i in inits for i in consts)
            and all(inits[i].data_type == onnx.TensorProto.UINT8 for i in consts[:1] + consts[2:]))


def _dynamic_int8_weight(head: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                         inits: dict[str, onnx.TensorProto]) -> tuple[str, str, str] | None:
    """(int8 weight, scale, zero point) of a head quantize_dynamic wrote with one scale:
    logits = Mul(Cast(MatMulInteger(x_q, W_q, x_zero, W_zero)), Mul(x_scale, W_scale))."""
    if head.op_type != "Mul":
        return None
    a, b = (producers.get(i) for i in head.input)
    cast, scales = (a, b) if a is not None and a.op_type == "Cast" else (b, a)
    if cast is None or cast.op_type != "Cast" or scales is None or scales.op_type != "Mul":
        return None
    matmul = producers.get(cast.input[0])
    if matmul is None or matmul.op_type != "MatMulInteger" or len(matmul.input) < 4:
        return None
    weight, zero = matmul.input[1], matmul.input[3]
    scale = next((i for i in scales.input if i in inits), None)
    if weight in inits and zero in inits and scale is not None and int(np.prod(inits[scale].dims)) == 1:
        return weight, scale, zero
    return None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
