"""ONNX-level quantization.

Two routes, both on the fp32 graph after `passes.gemm_to_matmul` and `passes.fold_transposes`:

1. From the torch quantize step's own integers (compress.quantization.handoff), not re-quantized:
     weight-only int4/int8  ->  com.microsoft MatMulNBits (codes packed, the step's scales and zeros)
     W8A8 (input_scale set) ->  QuantizeLinear/DequantizeLinear on the activation with the step's
                                scale, DequantizeLinear on the int8 weight, then MatMul
   so ONNX Runtime computes what compress.quantization.modules.QuantLinear computes in torch.
2. ONNX Runtime's own quantizers on the graph of an fp32 model, for the methods whose layout is applied
   here (compress.quantization.ort_graph: ort-dynamic-int8 -> quantize_dynamic, ort-int4 / ort-int8 ->
   the MatMulNBits quantizer, symmetric, blockwise).

Which route runs is looked up by the method's OnnxForm (ORT_PASSES), never by its name.

A MatMul is matched to a torch module by its exporter node name ('/transformer/h.0/attn/c_attn/MatMul'
-> 'transformer.h.0.attn.c_attn'), and its weight is checked against the dequantized codes before it
is replaced, so a wrong match cannot pass silently. One pass does this for every target
(`replace_weight_matmuls`); only the nodes it writes differ (here for ONNX Runtime, in
export.trt_qdq for TensorRT).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress.errors import UserError
from compress.quantization.registry import OnnxForm
from export.passes import MS_DOMAIN, ensure_ms_domain, initializers, keep_root_logging, quiet, set_nodes

if TYPE_CHECKING:
    from compress.quantization.handoff import LinearCodes

log = logging.getLogger(__name__)


def module_of(node: onnx.NodeProto) -> str:
    """'/transformer/h.0/attn/c_attn/MatMul' -> 'transformer.h.0.attn.c_attn' (torch exporter names)."""
    return ".".join(node.name.strip("/").split("/")[:-1])


def weight_matmuls(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """MatMul nodes whose second input is an initializer, by the torch module they came from."""
    inits = initializers(model)
    return {module_of(n): n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def nbits_block_size(group_size: int) -> int:
    """MatMulNBits needs a power-of-two block >= 16; a group is cut into equal blocks sharing its scale."""
    block = group_size & -group_size  # largest power of two dividing the group
    block = min(block, 256)
    if block < 16:
        raise UserError(f"group_size {group_size} has no power-of-two block >= 16 dividing it; "
                        "MatMulNBits cannot represent it (use a group_size that is a multiple of 16)")
    return block


def pack_nbits(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """uint8 codes (N, K) -> MatMulNBits blob (N, K // block, block * bits // 8), low nibble first."""
    n, k = q.shape
    blocks = q.reshape(n, k // block, block)  # (N, nb, block)
    if bits == 8:
        return np.ascontiguousarray(blocks)
    return np.ascontiguousarray(blocks[..., 0::2] | (blocks[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(zeros: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points (N, nb) -> MatMulNBits layout (N, ceil(nb * bits / 8)), low nibble first."""
    if bits == 8:
        return np.ascontiguousarray(zeros)
    n, nb = zeros.shape
    padded = np.full((n, nb + nb % 2), 8, np.uint8)
    padded[:, :nb] = zeros
    return np.ascontiguousarray(padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def _check_weight(ql: "LinearCodes", node: onnx.NodeProto, weight: np.ndarray) -> None:
    """The graph's fp32 weight (K, N) must be the dequantized codes, or we matched the wrong MatMul."""
    expected = ql.dequantize().numpy().T  # (K, N)
    if weight.shape != expected.shape:
        raise UserError(f"{ql.name}: graph weight of {node.name} is {weight.shape}, codes are {expected.shape[::-1]} "
                        "(out, in); was the ONNX exported from this quantized model?")
    err = float(np.abs(weight - expected).max())
    if err > 1e-4 * float(np.abs(expected).max()) + 1e-6:
        raise UserError(f"{ql.name}: graph weight of {node.name} differs from the dequantized codes by {err:.3g}")


def matmul_nbits_nodes(ql: "LinearCodes", node: onnx.NodeProto,
                       accuracy_level: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One MatMulNBits node (and its initializers) standing for `node`, from the step's integers."""
    block = nbits_block_size(ql.group_size)
    repeat = ql.group_size // block  # blocks per group, each with the group's scale and zero
    q = ql.q.numpy().astype(np.uint8)  # (N, K)
    scales = np.repeat(ql.scales.numpy().astype(np.float32), repeat, axis=1)  # (N, K // block)
    zeros = np.repeat(ql.zeros.numpy().astype(np.uint8), repeat, axis=1)
    prefix = ql.name
    inits = [numpy_helper.from_array(pack_nbits(q, ql.bits, block), f"{prefix}.q{ql.bits}"),
             numpy_helper.from_array(scales, f"{prefix}.scales")]
    inputs = [node.input[0], inits[0].name, inits[1].name]
    if not np.all(zeros == 2 ** (ql.bits - 1)):  # the op's default zero point is 2**(bits-1)
        inits.append(numpy_helper.from_array(pack_zero_points(zeros, ql.bits), f"{prefix}.zeros"))
        inputs.append(inits[-1].name)
    attrs = {"K": ql.in_features, "N": ql.out_features, "bits": ql.bits, "block_size": block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    mm = helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name}NBits",
                          domain=MS_DOMAIN, **attrs)
    return [mm], inits


def qdq_nodes(ql: "LinearCodes", node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """W8A8: Q/DQ of the activation with the step's per-tensor scale, DQ of the per-channel int8 weight."""
    if ql.bits != 8 or ql.group_size != ql.in_features:
        raise UserError(f"{ql.name}: W8A8 export needs 8-bit per-channel weights "
                        f"(got {ql.bits} bits, group_size {ql.group_size} of {ql.in_features})")
    p = ql.name
    # Codes re-centred to int8 (q - 128, zero - 128): the same real values, the signed layout ORT fuses.
    w_q = (ql.q.numpy().astype(np.int16) - 128).astype(np.int8).T  # (K, N)
    w_zero = (ql.zeros.numpy()[:, 0].astype(np.int16) - 128).astype(np.int8)  # (N,)
    inits = [numpy_helper.from_array(np.float32(ql.input_scale), f"{p}.input_scale"),
             numpy_helper.from_array(np.int8(0), f"{p}.input_zero"),
             numpy_helper.from_array(np.ascontiguousarray(w_q), f"{p}.w_int8"),
             numpy_helper.from_array(ql.scales.numpy()[:, 0].astype(np.float32), f"{p}.w_scale"),
             numpy_helper.from_array(w_zero, f"{p}.w_zero")]
    x, out = node.input[0], node.output[0]
    nodes = [
        helper.make_node("QuantizeLinear", [x, f"{p}.input_scale", f"{p}.input_zero"], [f"{p}/x_q"], name=f"{node.name}/QuantizeX"),
        helper.make_node("DequantizeLinear", [f"{p}/x_q", f"{p}.input_scale", f"{p}.input_zero"], [f"{p}/x_dq"],
                         name=f"{node.name}/DequantizeX"),
        helper.make_node("DequantizeLinear", [f"{p}.w_int8", f"{p}.w_scale", f"{p}.w_zero"], [f"{p}/w_dq"],
                         name=f"{node.name}/DequantizeW", axis=1),
        helper.make_node("MatMul", [f"{p}/x_dq", f"{p}/w_dq"], [out], name=node.name),
    ]
    return nodes, inits


NodeBuilder = Callable[["LinearCodes", onnx.NodeProto], tuple[list[onnx.NodeProto], list[onnx.TensorProto]]]


def replace_weight_matmuls(model: onnx.ModelProto, records: dict[str, "LinearCodes"],
                           build: NodeBuilder) -> None:
    """The one weight-replacement pass: the MatMul of every record becomes `build(record, node)`
    (MatMulNBits, Q/DQ for ONNX Runtime, Q/DQ for TensorRT). In place, and only once every record has
    found its MatMul, been built and had its graph weight checked against the dequantized codes, so a
    refused record leaves the graph as it was."""
    matmuls = weight_matmuls(model)
    missing = sorted(set(records) - set(matmuls))
    if missing:
        raise UserError(f"no weight MatMul for {', '.join(missing[:3])} in the exported graph "
                        f"(found: {', '.join(sorted(matmuls)[:4])}, ...)")
    inits = initializers(model)
    replace: dict[str, tuple[list, list]] = {}
    for name, ql in records.items():
        node = matmuls[name]
        replace[node.name] = build(ql, node)
        _check_weight(ql, node, numpy_helper.to_array(inits[node.input[1]]))
    for _, new_inits in replace.values():
        model.graph.initializer.extend(new_inits)
    nodes = [n for node in model.graph.node for n in (replace[node.name][0] if node.name in replace else [node])]
    set_nodes(model, nodes)  # the replaced weights go
    if any(n.domain == MS_DOMAIN for new_nodes, _ in replace.values() for n in new_nodes):
        ensure_ms_domain(model)


def write_for_ort(model: onnx.ModelProto, records: dict[str, "LinearCodes"],
                  accuracy_level: int = 0) -> dict[str, int]:
    """The quantize step's integers for ONNX Runtime (forms MatMulNBits and QDQ W8A8). In place.

    A record with a static activation scale (W8A8's block projections) becomes Q/DQ, any other (weight-only
    layers, a W8A8 method's weight-only head) MatMulNBits. accuracy_level 0 keeps fp32 compute (matches
    torch); 4 lets MatMulNBits quantize activations to int8 per block (faster decode on CPUs with int8 dot
    products, not bit-exact with torch).
    """
    def build(ql: "LinearCodes", node: onnx.NodeProto):
        return qdq_nodes(ql, node) if ql.input_scale is not None else matmul_nbits_nodes(ql, node, accuracy_level)

    replace_weight_matmuls(model, records, build)
    kinds = {"MatMulNBits": 0, "QDQ": 0}
    for ql in records.values():
        kinds["QDQ" if ql.input_scale is not None else "MatMulNBits"] += 1
    return kinds


# -- ONNX Runtime's own quantizers (methods ort-int4 / ort-int8 / ort-dynamic-int8 on an fp32 model) ---------

def ort_dynamic_int8(model: onnx.ModelProto, per_channel: bool = False,
                     op_types: tuple[str, ...] | None = ("MatMul",)) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_dynamic: int8 weights, activations quantized per call.

    We quantize weight MatMuls only (export.tied_embedding then points a tied token lookup at the
    head's int8 weight; the position table stays fp32), per tensor: per-channel scales measured no
    better in perplexity and slower in decode on the reference teacher (bench/onnx.py)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="gpt2-edge-qdyn-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        with quiet("onnxruntime.quantization"):
            # DefaultTensorType: shape inference cannot type the outputs of fused contrib ops.
            quantize_dynamic(src, dst, per_channel=per_channel, weight_type=QuantType.QInt8,
                             op_types_to_quantize=list(op_types) if op_types else None,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(dst)


def ort_matmul_nbits(model: onnx.ModelProto, bits: int, block_size: int, accuracy_level: int = 0) -> onnx.ModelProto:
    """onnxruntime's MatMulNBits quantizer (RTN, symmetric, blockwise) over every weight MatMul."""
    with keep_root_logging():  # its import calls logging.basicConfig(level=INFO)
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None, op_types_to_quantize=("MatMul",))
    with quiet("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    return quantizer.model.model


# -- what the export writes, by the quantization method's OnnxForm ------------------------------------------

@dataclass(frozen=True)
class GraphQuantization:
    """The model's quantization as an ONNX export sees it: its method's OnnxForm and grid, and the codes
    the quantize step handed off ({} where ONNX Runtime quantizes the graph)."""

    form: OnnxForm
    method: str
    bits: int
    group_size: int | None  # None: per channel (or the method's own blocks)
    records: dict[str, "LinearCodes"]

    @property
    def label(self) -> str:
        """For summaries and validation references: 'ort-int4 g32', 'rtn int4 g128'."""
        return f"{self.method} int{self.bits}" + (f" g{self.group_size}" if self.group_size else "")


def graph_quantization(model, records: dict[str, "LinearCodes"]) -> GraphQuantization | None:
    """What the quantize step recorded on the model (config.quantization_config, as compress.quantization
    writes it in memory and in config.json), or None for a float model."""
    from compress.quantization.methods import method

    config = getattr(model, "config", None)
    details = (getattr(config, "quantization_config", None) or {}).get("gpt2_edge")
    if details is None:
        if records:
            raise UserError("quantized layers without the quantize step's record (config.quantization_config)")
        return None
    m = method(details["method"])
    if m.onnx is None:
        raise UserError(f"method {m.name} has no ONNX form; quantize with one that has (docs/quantization.md)")
    group = details.get("group_size")
    return GraphQuantization(m.onnx, m.name, details["bits"], group if isinstance(group, int) else None, records)


@dataclass(frozen=True)
class OrtPass:
    """How the ONNX Runtime export writes one OnnxForm: `write(graph, quantization, accuracy_level)` ->
    (graph, what it did). The step's own codes are matched to the exporter's MatMul names, so they are
    written before ORT's Python fusions; ORT's quantizers run on the fused graph (as bench/onnx.py measured)."""

    write: Callable[[onnx.ModelProto, GraphQuantization, int], tuple[onnx.ModelProto, dict]]
    on_fused_graph: bool


def _codes(graph: onnx.ModelProto, q: GraphQuantization, accuracy_level: int) -> tuple[onnx.ModelProto, dict]:
    return graph, {"from_quantize_step": write_for_ort(graph, q.records, accuracy_level)}


def _nbits(graph: onnx.ModelProto, q: GraphQuantization, accuracy_level: int) -> tuple[onnx.ModelProto, dict]:
    block = q.group_size or 128
    return ort_matmul_nbits(graph, q.bits, block, accuracy_level), {"ort_quantizer": f"MatMulNBits int{q.bits} "
                                                                                      f"block {block}"}


def _dynamic(graph: onnx.ModelProto, q: GraphQuantization, accuracy_level: int) -> tuple[onnx.ModelProto, dict]:
    return ort_dynamic_int8(graph), {"ort_quantizer": "quantize_dynamic int8 (MatMulInteger)"}


ORT_PASSES: dict[OnnxForm, OrtPass] = {
    OnnxForm.MATMUL_NBITS: OrtPass(_codes, on_fused_graph=False),
    OnnxForm.QDQ_W8A8: OrtPass(_codes, on_fused_graph=False),
    OnnxForm.ORT_NBITS: OrtPass(_nbits, on_fused_graph=True),
    OnnxForm.ORT_DYNAMIC_INT8: OrtPass(_dynamic, on_fused_graph=True),
}


def ort_passes(graph: onnx.ModelProto, cfg, quant: GraphQuantization | None, done: dict,
               fuse: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, dict]] | None = None) -> onnx.ModelProto:
    """The ONNX Runtime passes of an fp32 export graph (model.onnx and model_decode.onnx alike), in order:
    the quantization's pass (ORT_PASSES[its OnnxForm]) before or after `fuse` (ORT's Python fusions,
    model.onnx only), then the tied table stored once. `cfg`: the step's ExportConfig (accuracy_level).
    Records in `done`."""
    from export import tied_embedding

    tied = tied_embedding.tied_token_gather(graph)  # checked on the fp32 graph, before any quantizer
    write = ORT_PASSES[quant.form] if quant is not None else None
    if write is not None and not write.on_fused_graph:
        graph, did = write.write(graph, quant, cfg.accuracy_level)
        done.update(did)
    if fuse is not None:
        graph, done["fused"] = fuse(graph)
    if write is not None and write.on_fused_graph:
        graph, did = write.write(graph, quant, cfg.accuracy_level)
        done.update(did)
    shared = tied_embedding.share_tied_embedding(graph, tied) if tied else ""
    done["tied_embedding"] = shared or ("stored twice: the head's form cannot be gathered" if tied else "not tied")
    return graph


def quantized_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes that carry integer weights, by op type (for logs, validation.json and tests)."""
    kinds = ("MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "DequantizeLinear",
             "GatherBlockQuantized")
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in kinds:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out

