"""The table of quantization methods: one `QuantMethod` entry (registry.py) per method, by name.

An entry says what the method can do (bits, grid, storage layout, ONNX form, calibration, options)
and names the function that does it, imported on its first call (compress.lazy.lazy_function): plan
validation reads this table without importing torch or the quantizers. Adding a method is its module
(the run function, with the torch code) plus one entry here; its options, if any, go in options.py.
Nothing outside a method's own module compares method names: everything else reads its entry.
"""

from __future__ import annotations

from pydantic import BaseModel

from compress.lazy import lazy_function
from compress.quantization.options import AwqOptions, DynamicOptions, GptqOptions, LlmInt8Options, SmoothQuantOptions
from compress.quantization.registry import Grid, Layout, OnnxForm, QuantMethod

BNB = ("bitsandbytes", "bnb")  # (module, pip extra) of the bitsandbytes methods
ONNX_EXTRA = ("onnxruntime", "onnx")  # (module, pip extra) of the methods ONNX Runtime applies in the graph

# In the order the plan's error messages and the docs list them.
ENTRIES: tuple[QuantMethod, ...] = (
    QuantMethod("rtn", bits=(4, 8), grid=Grid.GROUPS, layout=Layout.PACKED, onnx=OnnxForm.MATMUL_NBITS,
                calibrates=False, run=lazy_function("compress.quantization.rtn:quantize_rtn"), asymmetric=True,
                quantizes_head=True, per_module=True, quantizes_factors=True,
                summary="round-to-nearest on the integer grid"),
    QuantMethod("gptq", bits=(4, 8), grid=Grid.GROUPS, layout=Layout.PACKED, onnx=OnnxForm.MATMUL_NBITS,
                calibrates=True, run=lazy_function("compress.quantization.gptq:run_gptq"), options=GptqOptions,
                asymmetric=True, quantizes_head=True, per_module=True, quantizes_factors=True,
                summary="GPTQ: rounding errors spread by the inverse Hessian of the inputs"),
    QuantMethod("smoothquant", bits=(8,), grid=Grid.PER_CHANNEL, layout=Layout.INT8, onnx=OnnxForm.QDQ_W8A8,
                calibrates=True, run=lazy_function("compress.quantization.smoothquant:run_smoothquant"),
                options=SmoothQuantOptions, quantizes_head=True, smooths=True,
                summary="W8A8: activation outliers migrated into the weights, static int8 activations"),
    QuantMethod("bnb-int8", bits=(8,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=lazy_function("compress.quantization.bnb:run_bnb"), options=LlmInt8Options, requires=BNB,
                summary="LLM.int8: outlier features above threshold kept in fp16"),
    QuantMethod("bnb-nf4", bits=(4,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=lazy_function("compress.quantization.bnb:run_bnb"), requires=BNB,
                summary="bitsandbytes NF4, blocks of 64"),
    QuantMethod("bnb-fp4", bits=(4,), grid=Grid.OWN, layout=Layout.BITSANDBYTES, onnx=None, calibrates=False,
                run=lazy_function("compress.quantization.bnb:run_bnb"), requires=BNB,
                summary="bitsandbytes FP4, blocks of 64"),
    QuantMethod("dynamic-int8", bits=(8,), grid=Grid.PER_CHANNEL, layout=Layout.INT8_DYNAMIC, onnx=None,
                calibrates=False, run=lazy_function("compress.quantization.dynamic:run_dynamic_int8"),
                options=DynamicOptions, cpu_only=True,
                summary="torch.ao dynamic int8: activations quantized per tensor at run time (CPU)"),
    QuantMethod("awq", bits=(4, 8), grid=Grid.GROUPS, layout=Layout.PACKED, onnx=OnnxForm.MATMUL_NBITS,
                calibrates=True, run=lazy_function("compress.quantization.awq:run_awq"), options=AwqOptions,
                asymmetric=True, quantizes_head=True, per_module=True,
                summary="AWQ: activation-aware input scales folded into the model, then the rtn grid"),
    QuantMethod("ort-int4", bits=(4,), grid=Grid.BLOCKS, layout=Layout.ONNX_GRAPH, onnx=OnnxForm.ORT_NBITS,
                calibrates=False, run=lazy_function("compress.quantization.ort_graph:keep_weights"),
                requires=ONNX_EXTRA,
                summary="ONNX Runtime's MatMulNBits quantizer on the exported graph (int4, symmetric blocks)"),
    QuantMethod("ort-int8", bits=(8,), grid=Grid.BLOCKS, layout=Layout.ONNX_GRAPH, onnx=OnnxForm.ORT_NBITS,
                calibrates=False, run=lazy_function("compress.quantization.ort_graph:keep_weights"),
                requires=ONNX_EXTRA,
                summary="ONNX Runtime's MatMulNBits quantizer on the exported graph (int8, symmetric blocks)"),
    QuantMethod("ort-dynamic-int8", bits=(8,), grid=Grid.OWN, layout=Layout.ONNX_GRAPH,
                onnx=OnnxForm.ORT_DYNAMIC_INT8, calibrates=False,
                run=lazy_function("compress.quantization.ort_graph:smooth_for_ort_dynamic"), options=DynamicOptions,
                requires=ONNX_EXTRA,
                summary="ONNX Runtime's quantize_dynamic on the exported graph (MatMulInteger, activations per "
                        "tensor per call)"),
)
METHODS: dict[str, QuantMethod] = {m.name: m for m in ENTRIES}
if len(METHODS) != len(ENTRIES):
    raise RuntimeError("a quantization method name is in the table twice")


def method(name: str) -> QuantMethod:
    """The entry of a method name (as validated by QuantizeConfig.method or read from config.json)."""
    return METHODS[name]


def method_modules() -> list[str]:
    """The modules that hold the methods' code (the only ones that may compare method names)."""
    return list(dict.fromkeys(m.run.module for m in ENTRIES))


def option_classes() -> tuple[type[BaseModel], ...]:
    """Every method's option model once, in table order (mixed into QuantizeConfig)."""
    seen: dict[type[BaseModel], None] = {}
    for m in METHODS.values():
        seen.setdefault(m.options, None)
    return tuple(seen)


def methods_reading(field: str) -> list[str]:
    """Names of the methods whose options include `field`."""
    return [m.name for m in METHODS.values() if field in m.options.model_fields]


def exportable_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.exportable]


def graph_methods() -> list[str]:
    """Names of the methods whose layout ONNX Runtime applies to the exported graph (ort_graph.py)."""
    return [m.name for m in METHODS.values() if m.onnx is not None and m.onnx.in_graph]
