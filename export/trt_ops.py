"""What the TensorRT ONNX parser accepts, as data: target versions, supported ops and their types.

Sources (gathered in ../shared/TENSORRT.md): onnx/onnx-tensorrt docs/operators.md for TensorRT 10.15
(op list and types; opset 9..24) and 10.1 (opset 9..20), docs/Changelog.md (INT64 native since 9.0,
LayerNormalization since 8.6), NVIDIA/TensorRT CHANGELOG.md (INT4 since 10.0, tensor Slice axes
since 10.3, ONNX Attention since 10.14), JetPack release notes for which TensorRT ships where.
"""

from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class TrtRelease:
    """One TensorRT version a device may run (the keys of TRT_VERSIONS), not a device: those are
    evalsuite.hardware's targets."""

    version: tuple[int, int]
    ships_with: str
    max_opset: int  # from the parser's docs/operators.md of that version
    int64_native: bool  # TRT >= 9: INT64 tensors kept; 8.x casts INT64 weights to INT32 with clamping
    int4: bool  # INT4 DequantizeLinear (weight-only), TRT >= 10.0
    tensor_slice_axes: bool  # Slice `axes` may be a tensor from 10.3 (constant before)


TRT_VERSIONS = {
    "8.5": TrtRelease((8, 5), "JetPack 5.1", 17, False, False, False),
    "8.6": TrtRelease((8, 6), "JetPack 6.0", 17, False, False, False),
    "10.3": TrtRelease((10, 3), "JetPack 6.1 / 6.2", 20, True, True, True),
    "10.15": TrtRelease((10, 15), "x86 / SBSA", 24, True, True, True),
}
DEFAULT_TRT_VERSION = "10.3"

# Supported ops of the TensorRT ONNX parser and the types of their data input
# (onnx-tensorrt docs/operators.md, TensorRT 10.15; "N" rows left out). Ops newer than an older
# target's parser are caught by the opset check or by OP_SINCE.
F = frozenset({"FP32", "FP16", "BF16"})
FI = F | {"INT32", "INT64"}
FIB = FI | {"BOOL"}
B = frozenset({"BOOL"})
H = frozenset({"FP32", "FP16"})
Q = frozenset({"INT8", "INT4", "FP8", "FP4"})
SUPPORTED_OPS: dict[str, frozenset[str]] = {
    **dict.fromkeys(["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization",
                     "Ceil", "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum",
                     "Elu", "Erf", "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
                     "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler",
                     "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
                     "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization",
                     "ParametricSoftplus", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
                     "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RMSNormalization", "RNN",
                     "RotaryEmbedding", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax",
                     "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample"], F),
    **dict.fromkeys(["Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater",
                     "GreaterOrEqual", "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad",
                     "Pow", "Range", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                     "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Scatter",
                     "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK"], FI),
    **dict.fromkeys(["Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND",
                     "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice",
                     "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where"], FIB),
    **dict.fromkeys(["And", "Not", "Or", "Xor"], B),
    **dict.fromkeys(["BlackmanWindow", "DeformConv", "GridSample", "HammingWindow", "HannWindow", "Mish",
                     "NonMaxSuppression", "NonZero", "RoiAlign"], H),
    "Attention": F | {"INT8", "FP8"}, "Cast": FIB | {"UINT8"}, "CastLike": FIB | {"UINT8"},
    "Constant": FIB | Q, "ConstantOfShape": FIB | Q, "DequantizeLinear": Q, "Gelu": FI | {"INT8"},
    "Mean": FI | {"FP8"}, "STFT": frozenset({"FP32"}), "TensorScatter": F | {"INT32"},
}
OP_SINCE = {"LayerNormalization": (8, 6), "Attention": (10, 14)}
DATA_INPUT = {"Where": 1}  # index of the input whose type the table lists (0 otherwise)
LAYOUT_OPS = ("Transpose", "Reshape", "Identity", "Cast")  # walked through to find a weight's origin

# What to do instead, for ops that ONNX Runtime's tools emit. The com.microsoft ones are no TensorRT
# ops: the parser ignores the domain, looks for a plugin of that name and fails ("Plugin not found").
HINTS = {
    "MatMulNBits": "4-bit weights for TensorRT need DequantizeLinear with INT4 blocked weights feeding "
                   "MatMul/Gemm (export with precision int4 for tensorrt), not ONNX Runtime's MatMulNBits",
    "DynamicQuantizeMatMul": "TensorRT needs static Q/DQ (explicit int8), not dynamic quantization",
    "GatherBlockQuantized": "quantize the embedding with DequantizeLinear + Gather instead",
    "MatMulInteger": "dynamic int8 (quantize_dynamic) cannot build; TensorRT int8 needs static Q/DQ",
    "DynamicQuantizeLinear": "dynamic int8 (quantize_dynamic) cannot build; TensorRT int8 needs static Q/DQ",
    "QLinearMatMul": "QOperator format cannot build; quantize in QDQ format",
}
# ONNX element types (TensorProto.DataType names: no onnx import, so `python -m export.tensorrt --help`,
# which reads TRT_VERSIONS, stays light) -> TensorRT's names; export.trt_check.trt_type reads it.
ONNX_TYPES = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "INT32": "INT32", "INT64": "INT64",
              "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL", "INT4": "INT4", "FLOAT8E4M3FN": "FP8",
              "FLOAT4E2M1": "FP4", "DOUBLE": "DOUBLE"}
