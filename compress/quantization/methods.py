"""The table of quantization methods: every `QuantMethod` entry (registry.py), by name.

A method lives in one module that defines `METHODS = (QuantMethod(...), ...)`; naming that module in
METHOD_MODULES registers it (the plan's `method:` accepts it, `quantize()` runs it, storage and the
exporters read its layout). The modules are imported once, here, explicitly: nothing is discovered.
"""

from __future__ import annotations

from pydantic import BaseModel

from compress.method_table import load_table
from compress.quantization.registry import QuantMethod

# In the order the plan's error messages and the docs list them.
METHOD_MODULES: tuple[str, ...] = (
    "compress.quantization.rtn",
    "compress.quantization.gptq",
    "compress.quantization.smoothquant",
    "compress.quantization.bnb_methods",
    "compress.quantization.dynamic",
    "compress.quantization.awq",
    "compress.quantization.ort_graph",
)

METHODS: dict[str, QuantMethod] = load_table(METHOD_MODULES, "quantization")


def method(name: str) -> QuantMethod:
    """The entry of a method name (as validated by QuantizeConfig.method or read from config.json)."""
    return METHODS[name]


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
