"""Static check that an exported ONNX graph will parse and build in TensorRT, without TensorRT.

    findings = check("model.onnx", precision="int8")   # [Finding(severity, code, node, message)]

Rules (each a small function below): opset range of the target TensorRT; every op against the
ONNX parser's supported-operator list, recursing into If/Loop bodies; contrib (com.microsoft) ops,
which the parser looks up as plugins and fails on; per-op restrictions (constant axes, Gemm rank,
LayerNormalization outputs, If branches); dtypes (no double, no 16-bit or unsigned ints, quantized
types only through Q/DQ, int64 weights that TensorRT 8.x narrows); Q/DQ rules (symmetric, constant
positive scales, per-tensor activations, per-channel and blocked-INT4 weight scales); the precision
asked for against the quantization actually in the graph; dynamic input dims against the profile.

Facts come from ../shared/TENSORRT.md (onnx-tensorrt docs/operators.md for TensorRT 10.1 and 10.15,
ModelImporter.cpp / onnxOpImporters.cpp, NvInfer.h of release/10.3). This module runs everywhere and
is tested on small graphs with planted problems; whether a graph it passes really builds is only
known once TensorRT has built it on a device.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from export.profiles import InputSpec, TensorRTProfile, profile_problems, shape_problems
from export.trt_ops import (DATA_INPUT, DEFAULT_TRT_VERSION, HINTS, LAYOUT_OPS, ONNX_TYPES, OP_SINCE, SUPPORTED_OPS,
                            TRT_VERSIONS, TrtRelease)

Severity = Literal["error", "warning", "info"]
Precision = Literal["fp32", "fp16", "int8", "int4"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str  # e.g. "unsupported-op", "contrib-op", "qdq-zero-point"
    node: str  # node (or tensor / input) name; "" for whole-model findings
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: [{self.code}] {self.node + ': ' if self.node else ''}{self.message}"


QUANTIZED = {"INT8", "INT4", "FP8", "FP4", "UINT8"}
GEMMS = ("MatMul", "Gemm")


class GraphIndex:
    """Lookups over the top-level graph: constants, types, shapes, producers and consumers."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.types: dict[str, str] = {}
        self.dims: dict[str, tuple] = {}
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            t = vi.type.tensor_type
            self.types[vi.name] = trt_type(t.elem_type)
            if t.HasField("shape"):
                self.dims[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                           for d in t.shape.dim)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(a.t)
        for i in self.graph.initializer:
            self.types[i.name] = trt_type(i.data_type)
            self.dims[i.name] = tuple(i.dims)
        self.io = {vi.name for vi in [*self.graph.input, *self.graph.output]}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a build-time constant (initializer, Constant, or Constant -> Cast)."""
        if name in self.consts:
            return self.consts[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "Cast" and node.input[0] in self.consts:
            return self.consts[node.input[0]]
        return None

    def computed(self, name: str) -> bool:
        """Known to be computed at run time (a graph input or a non-constant node's output)."""
        graph_input = any(vi.name == name for vi in self.graph.input)
        return bool(name) and self.const(name) is None and (name in self.producer or graph_input)

    def origin(self, name: str) -> tuple[str, str]:
        """Where a MatMul/Gemm operand comes from, through layout ops: (kind, tensor), kind one of
        'int8' / 'int4' (a DequantizeLinear of constant weights), 'float' (a float constant), 'activation'."""
        for _ in range(4):
            node = self.producer.get(name)
            if node is not None and node.op_type == "DequantizeLinear" and self.const(node.input[0]) is not None:
                return ("int4" if self.types.get(node.input[0]) == "INT4" else "int8"), node.input[0]
            if self.const(name) is not None:
                return "float", name
            if node is None or node.op_type not in LAYOUT_OPS:
                break
            name = node.input[0]
        return "activation", name


def trt_type(elem_type: int) -> str:
    """TensorRT's name of an ONNX element type (FP32, INT4...); ONNX's own name where TensorRT has none."""
    name = TensorProto.DataType.Name(elem_type)
    return ONNX_TYPES.get(name, name)


def node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def walk(graph: onnx.GraphProto, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node with its name, including nodes inside If/Loop/Scan bodies (as 'outer/inner')."""
    for i, node in enumerate(graph.node):
        name = prefix + node_name(node, i)
        yield name, node
        for a in node.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                yield from walk(sub, f"{name}/{a.name}/", depth + 1)


# -- the rules ---------------------------------------------------------------------------------------

def check_opset(model: onnx.ModelProto, target: TrtRelease, index: GraphIndex) -> list[Finding]:
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = opsets.get("ai.onnx", 0)
    has_int4 = "INT4" in index.types.values()
    ver = ".".join(map(str, target.version))
    if v < 7:
        return [Finding("error", "opset", "", f"opset {v}: the TensorRT parser rejects opsets below 7")]
    if v < 9:
        return [Finding("warning", "opset", "", f"opset {v} is below the documented range 9..{target.max_opset}")]
    out = []
    if v > target.max_opset:
        if has_int4 and v == 21 and target.int4:
            out.append(Finding("warning", "opset", "", f"opset 21 (needed for INT4 Q/DQ) is above TensorRT {ver}'s "
                                                       f"documented {target.max_opset}; verify on the device"))
        else:
            out.append(Finding("error", "opset", "", f"opset {v} is above TensorRT {ver}'s maximum "
                                                     f"{target.max_opset}: export with opset {target.max_opset}"))
    if has_int4 and model.ir_version < 10:
        out.append(Finding("error", "ir-version", "", f"INT4 tensors need ONNX IR version 10, got {model.ir_version}"))
    return out


def check_ops(model: onnx.ModelProto, target: TrtRelease, index: GraphIndex) -> list[Finding]:
    out = []
    ver = ".".join(map(str, target.version))
    for name, node in walk(model.graph):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            hint = HINTS.get(op, "TensorRT would look for a plugin of this name and fail")
            out.append(Finding("error", "contrib-op", name, f"{node.domain}::{op} is not a TensorRT op: {hint}"))
        elif op not in SUPPORTED_OPS:
            hint = f": {HINTS[op]}" if op in HINTS else ""
            out.append(Finding("error", "unsupported-op", name, f"{op} is not supported by the TensorRT ONNX parser{hint}"))
        elif OP_SINCE.get(op, (0, 0)) > target.version:
            need = ".".join(map(str, OP_SINCE[op]))
            out.append(Finding("error", "unsupported-op", name, f"{op} needs TensorRT {need}+, target is {ver}"))
        else:
            out += _op_restrictions(name, node, target, index)
    return out


def _op_restrictions(name: str, node: onnx.NodeProto, target: TrtRelease, index: GraphIndex) -> list[Finding]:
    """Per-op rules of the parser (the Restrictions column of docs/operators.md)."""
    op, out = node.op_type, []

    def non_const_input(i: int, what: str) -> None:
        if len(node.input) > i and index.computed(node.input[i]):
            out.append(Finding("error", "non-constant-input", name, f"{op} {what} must be a build-time constant"))

    if op in ("Squeeze", "Unsqueeze") or op.startswith("Reduce"):
        non_const_input(1, "axes")
    if op == "Slice" and not target.tensor_slice_axes:
        non_const_input(3, "axes")
    if op == "Gemm":
        for i in (0, 1):
            rank = len(index.dims.get(node.input[i], ()) or ()) or None
            if rank not in (None, 2):
                out.append(Finding("error", "gemm-rank", name, f"Gemm input {i} has rank {rank}; TensorRT needs 2-D"))
    if op == "LayerNormalization" and any(o and (index.consumers.get(o) or o in index.io) for o in node.output[1:]):
        out.append(Finding("error", "layernorm-outputs", name, "only output Y of LayerNormalization is supported"))
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = index.const(node.input[2])
        if training is None or bool(training):
            out.append(Finding("error", "dropout-training", name, "is_training must be a constant False"))
    if op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        out.append(Finding("error", "constant-attr", name, "sparse or string Constant values are unsupported"))
    if op == "If":
        out += _if_rules(name, node)
    return out


def _if_rules(name: str, node: onnx.NodeProto) -> list[Finding]:
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    out = []
    if "use_cache_branch" in node.input[0]:
        out.append(Finding("error", "merged-decoder", name, "optimum's merged decoder (If on use_cache_branch) "
                                                            "fails in TensorRT; export the non-merged model"))
    if len(branches) == 2:
        then_out = [o.name for o in branches["then_branch"].output]
        else_out = [o.name for o in branches["else_branch"].output]
        if len(then_out) != len(else_out):
            out.append(Finding("error", "if-branches", name, f"branches return {len(then_out)} and {len(else_out)} outputs"))
        elif set(then_out) & set(else_out):
            out.append(Finding("error", "if-branches", name, "branch outputs must have different names"))
    return out


def check_dtypes(target: TrtRelease, index: GraphIndex) -> list[Finding]:
    out = []
    for tensor, dtype in index.types.items():
        if dtype == "DOUBLE":
            out.append(Finding("error", "dtype-double", tensor, "DOUBLE: TensorRT casts it to FLOAT with clamping; "
                                                                "export in float32"))
        elif dtype not in ONNX_TYPES.values():
            out.append(Finding("error", "dtype-unsupported", tensor, f"{dtype} is not a TensorRT type"))
        elif dtype in QUANTIZED and not _quantized_use_ok(tensor, dtype, index):
            out.append(Finding("error", "dtype-quantized", tensor,
                               f"{dtype} tensor outside Q/DQ: TensorRT reads quantized types only as "
                               f"QuantizeLinear outputs or DequantizeLinear inputs" +
                               (" (UINT8 also as network I/O)" if dtype == "UINT8" else "")))
    for i, node in enumerate(index.graph.node):  # the data type each op takes (docs/operators.md)
        allowed = SUPPORTED_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        k = DATA_INPUT.get(node.op_type, 0)
        dtype = index.types.get(node.input[k]) if allowed and len(node.input) > k else None
        if dtype and dtype != "DOUBLE" and dtype not in allowed:
            out.append(Finding("error", "op-dtype", node_name(node, i), f"{node.op_type} does not take {dtype} "
                                                                       f"(supported: {', '.join(sorted(allowed))})"))
    if not target.int64_native:
        for tensor, value in index.consts.items():
            # Slice starts/ends of +-2**63 ("to the end") clamp harmlessly; any other use changes a value.
            slice_bound = all(c.op_type == "Slice" and tensor in c.input[1:3] for c in index.consumers.get(tensor, []))
            if value.dtype == np.int64 and value.size and not slice_bound and (
                    value.max() > 2**31 - 1 or value.min() < -2**31):
                out.append(Finding("warning", "int64-narrowed", tensor, "INT64 constant outside the INT32 range: "
                                                                        "TensorRT 8.x narrows it to INT32 with clamping"))
    return out


def _quantized_use_ok(tensor: str, dtype: str, index: GraphIndex) -> bool:
    if dtype == "UINT8" and tensor in index.io:
        return True
    producer = index.producer.get(tensor)
    made_ok = producer is None or producer.op_type in ("QuantizeLinear", "Constant")
    used_ok = all((c.op_type == "DequantizeLinear" and c.input[0] == tensor)  # quantized data
                  or (c.op_type in ("QuantizeLinear", "DequantizeLinear") and c.input[2:3] == [tensor])  # zero point
                  for c in index.consumers.get(tensor, []))
    return made_ok and used_ok and tensor not in index.io


def check_qdq(target: TrtRelease, index: GraphIndex) -> list[Finding]:
    out = []
    for i, node in enumerate(index.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = node_name(node, i)
        scale = index.const(node.input[1])
        if scale is None:
            out.append(Finding("error", "qdq-scale", name, "scale must be a build-time constant"))
            continue
        if not np.all(scale > 0):
            out.append(Finding("error", "qdq-scale", name, "scales must all be > 0"))
        if len(node.input) > 2 and node.input[2]:
            zp = index.const(node.input[2])
            if zp is None or np.any(zp.astype(np.int64) != 0):
                out.append(Finding("error", "qdq-zero-point", name, "zero point must be constant 0: TensorRT "
                                                                    "only supports symmetric quantization"))
            elif index.types.get(node.input[2]) == "UINT8":
                out.append(Finding("warning", "qdq-uint8", name, "UINT8 zero point: TensorRT converts it to INT8"))
        weight = index.const(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is None:  # an activation: per-tensor only
            if scale.size != 1:
                out.append(Finding("error", "qdq-activation-scale", name,
                                   f"activation scale has shape {list(scale.shape)}: activations are per-tensor only"))
            if node.op_type == "QuantizeLinear" and index.types.get(node.output[0]) == "INT4":
                out.append(Finding("error", "qdq-int4-activation", name, "INT4 is weight-only in TensorRT"))
        else:
            out += _weight_scale_rules(name, node, weight, scale, target, index)
    return out


def _weight_scale_rules(name: str, node: onnx.NodeProto, w: np.ndarray, scale: np.ndarray, target: TrtRelease,
                        index: GraphIndex) -> list[Finding]:
    dtype = index.types.get(node.input[0])
    if dtype == "INT4":
        return _int4_rules(name, w, scale, target)
    if scale.size == 1:
        return []
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % w.ndim
    if scale.ndim != 1:
        return [Finding("error", "qdq-weight-scale", name, f"{dtype} weight with a rank-{scale.ndim} (blocked) "
                                                           f"scale: blocked quantization is INT4 only")]
    if scale.shape[0] != w.shape[axis]:
        return [Finding("error", "qdq-weight-scale", name, f"per-channel scale of length {scale.shape[0]} does not "
                                                           f"match weight dim {w.shape[axis]} on axis {axis}")]
    return []


def _int4_rules(name: str, w: np.ndarray, scale: np.ndarray, target: TrtRelease) -> list[Finding]:
    if not target.int4:
        return [Finding("error", "qdq-int4", name, "INT4 needs TensorRT 10+ (JetPack 6.1 or later)")]
    if w.ndim != 2 or scale.ndim != 2:
        return [Finding("error", "qdq-int4", name, f"INT4 needs a 2-D weight and a 2-D block scale, got "
                                                   f"{list(w.shape)} / {list(scale.shape)}")]
    blocked = [a for a in range(2) if scale.shape[a] != w.shape[a]]
    if len(blocked) != 1 or w.shape[blocked[0]] % scale.shape[blocked[0]]:
        return [Finding("error", "qdq-int4", name, f"scale {list(scale.shape)} must block exactly one axis of "
                                                   f"weight {list(w.shape)} evenly")]
    out = []
    if w.shape[-1] % 2:
        out.append(Finding("error", "qdq-int4", name, f"INT4 weight's last dim {w.shape[-1]} must be even (two per byte)"))
    block = w.shape[blocked[0]] // scale.shape[blocked[0]]
    if block not in (64, 128):
        out.append(Finding("warning", "qdq-int4-block", name, f"block size {block}: TensorRT documents 64 and 128"))
    return out


def check_precision(precision: Precision, index: GraphIndex) -> list[Finding]:
    """The precision asked for against the quantization the graph really has."""
    n_dq = sum(n.op_type == "DequantizeLinear" for n in index.graph.node)
    gemms = [(node_name(n, i), n) for i, n in enumerate(index.graph.node) if n.op_type in GEMMS]
    kinds = {name: index.origin(n.input[1])[0] for name, n in gemms}
    if precision in ("fp32", "fp16"):
        return [Finding("warning", "precision-mismatch", "", f"the graph has {n_dq} DequantizeLinear nodes "
                                                             f"but precision is {precision}")] if n_dq else []
    if precision not in kinds.values():
        how = "INT8 Q/DQ (quantize step, int8)" if precision == "int8" else "INT4 blocked DequantizeLinear weights"
        return [Finding("error", "precision-mismatch", "", f"precision {precision} needs {how} feeding "
                                                           f"MatMul/Gemm; the graph has none")]
    out = []
    for name, n in gemms:
        if kinds[name] == "float":
            out.append(Finding("warning", "not-quantized", name, f"{n.op_type} weight is not quantized: "
                                                                 f"runs in fp16/fp32"))
        elif kinds[name] == "int8" and precision == "int8" and index.origin(n.input[0])[0] == "activation" \
                and index.producer.get(n.input[0], n).op_type != "DequantizeLinear":
            out.append(Finding("info", "weight-only-int8", name, "no Q/DQ on the activation input: "
                                                                 "weight-only int8, not an int8 GEMM"))
    return out


def check_inputs(model: onnx.ModelProto, profile: TensorRTProfile | None, target: TrtRelease,
                 n_positions: int | None) -> list[Finding]:
    out = []
    for spec in graph_inputs(model):
        out += [Finding("error", "dynamic-shape", spec.name, p) for p in shape_problems(spec, profile)]
        if spec.dtype == "INT64" and not target.int64_native:
            out.append(Finding("info", "int64-input", spec.name, "TensorRT 8.x binds this input as INT32"))
    if profile is not None and n_positions is not None:
        out += [Finding("error", "profile", "", p) for p in profile_problems(profile, n_positions)]
    return out


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real graph inputs (not initializers listed as inputs by old exporters) as InputSpecs."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out.append(InputSpec(vi.name, dims, trt_type(t.elem_type)))
    return out


# -- entry points --------------------------------------------------------------------------------------

def check_model(model: onnx.ModelProto, precision: Precision = "fp16", profile: TensorRTProfile | None = None,
                target: str = DEFAULT_TRT_VERSION, n_positions: int | None = None) -> list[Finding]:
    """Every finding for an in-memory model (errors first)."""
    t = TRT_VERSIONS[target]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        note = []
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        inferred = model
        note = [Finding("warning", "shape-inference", "", f"ONNX shape inference failed ({e}); dtype checks are partial")]
    index = GraphIndex(inferred)
    findings = (note + check_opset(model, t, index) + check_ops(model, t, index) + check_dtypes(t, index)
                + check_qdq(t, index) + check_precision(precision, index)
                + check_inputs(model, profile, t, n_positions))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def check(onnx_path: str | Path, precision: Precision = "fp16", profile: TensorRTProfile | None = None,
          target: str = DEFAULT_TRT_VERSION, n_positions: int | None = None) -> list[Finding]:
    """Check an ONNX file (external weight data is read from beside it)."""
    return check_model(onnx.load(str(onnx_path)), precision, profile, target, n_positions)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
