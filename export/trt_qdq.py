"""Explicit Q/DQ for TensorRT from the quantize step's own integers (no re-quantization).

TensorRT builds int8 / int4 engines from DequantizeLinear (and QuantizeLinear) nodes in the graph:
int8 weights per output channel, int4 weights in blocks along K (weight-only), activations per
tensor (W8A8), all symmetric. ONNX Runtime's MatMulNBits is not a TensorRT op, so the export step's
TensorRT route writes these instead. Runs everywhere; tests check that ONNX Runtime computes the
same logits from this graph as from the dequantized fp32 one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.errors import UserError

if TYPE_CHECKING:
    from compress.quantization.handoff import LinearCodes


def pack_int4(q: np.ndarray) -> bytes:
    """Signed int4 codes -> ONNX INT4 raw data: two per byte, the first in the low nibble."""
    flat = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def qdq_for_tensorrt(ql: "LinearCodes", node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """DequantizeLinear of the signed weight codes (+ Q/DQ of the activation for W8A8) -> MatMul.

    TensorRT takes symmetric quantization only (zero points 0), so the codes are re-centred
    (q - 2**(bits-1)) and asymmetric codes are refused. int8: per-output-channel scale (axis 1 of the
    (K, N) weight); int4: blocks of group_size along K, scale (K / group_size, N), opset 21.
    """
    half = 2 ** (ql.bits - 1)
    if not bool((ql.zeros == half).all()):
        raise UserError(f"{ql.name}: asymmetric {ql.bits}-bit codes; TensorRT supports symmetric quantization "
                        f"only: quantize with sym: true")
    p, x = ql.name, node.input[0]
    q = (ql.q.numpy().astype(np.int16) - half).T  # (K, N): MatMul weight orientation
    if ql.bits == 8:
        if ql.group_size != ql.in_features:
            raise UserError(f"{ql.name}: int8 with group_size {ql.group_size}: TensorRT int8 is per-channel "
                            f"(group_size = in_features); blocked scales are int4-only")
        w = numpy_helper.from_array(np.ascontiguousarray(q.astype(np.int8)), f"{p}.w_int8")
        s = numpy_helper.from_array(ql.scales.numpy()[:, 0].astype(np.float32), f"{p}.w_scale")  # (N,)
        attrs: dict[str, Any] = {"axis": 1}
    elif ql.bits == 4:
        w = helper.make_tensor(f"{p}.w_int4", TensorProto.INT4, list(q.shape), pack_int4(q), raw=True)
        s = numpy_helper.from_array(np.ascontiguousarray(ql.scales.numpy().T.astype(np.float32)), f"{p}.w_scale")
        attrs = {"axis": 0, "block_size": ql.group_size}  # scale (K / G, N)
    else:
        raise UserError(f"{ql.name}: {ql.bits}-bit codes; TensorRT takes int8 or int4")
    nodes = [helper.make_node("DequantizeLinear", [w.name, s.name], [f"{p}/w_dq"], name=f"{node.name}/DequantizeW",
                              **attrs)]
    inits = [w, s]
    if ql.input_scale is not None:  # W8A8: per-tensor activation Q/DQ so TensorRT can run an int8 GEMM
        inits += [numpy_helper.from_array(np.float32(ql.input_scale), f"{p}.x_scale"),
                  numpy_helper.from_array(np.int8(0), f"{p}.x_zero")]
        nodes = [helper.make_node("QuantizeLinear", [x, f"{p}.x_scale", f"{p}.x_zero"], [f"{p}/x_q"],
                                  name=f"{node.name}/QuantizeX"),
                 helper.make_node("DequantizeLinear", [f"{p}/x_q", f"{p}.x_scale", f"{p}.x_zero"], [f"{p}/x_dq"],
                                  name=f"{node.name}/DequantizeX"), *nodes]
        x = f"{p}/x_dq"
    nodes.append(helper.make_node("MatMul", [x, f"{p}/w_dq"], list(node.output), name=node.name))
    return nodes, inits


def write_qdq(graph: onnx.ModelProto, records: dict[str, "LinearCodes"]) -> dict[str, int]:
    """Replace the MatMul of every quantized layer by Q/DQ + MatMul, in place (the shared pass of
    export.onnx_quant, which checks each weight first). Returns counts by bits."""
    from export.onnx_quant import replace_weight_matmuls

    if any(ql.bits == 4 for ql in records.values()):
        opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 21:
            raise UserError(f"int4 for TensorRT needs INT4 DequantizeLinear with block_size (ONNX opset 21); "
                            f"the export used opset {opset}: set opset: 21 in the export step")
    replace_weight_matmuls(graph, records, qdq_for_tensorrt)
    if any(ql.bits == 4 for ql in records.values()):
        graph.ir_version = max(graph.ir_version, 10)  # INT4 tensors
    counts: dict[str, int] = {}
    for ql in records.values():
        counts[f"int{ql.bits}"] = counts.get(f"int{ql.bits}", 0) + 1
    return counts
