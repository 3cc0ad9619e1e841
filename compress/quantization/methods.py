"""The table of quantization methods: every `QuantMethod` entry (registry.py), by name.

A method lives in one module that defines `METHODS = (QuantMethod(...), ...)`; naming that module in
METHOD_MODULES registers it (the plan's `method:` accepts it, `quantize()` runs it, storage and the
exporters read its layout). The modules are imported once, here, explicitly: nothing is discovered.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

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


def _load_table() -> dict[str, QuantMethod]:
    table: dict[str, QuantMethod] = {}
    for module_name in METHOD_MODULES:
        for m in importlib.import_module(module_name).METHODS:
            if m.name in table:
                raise RuntimeError(f"quantization method {m.name!r} is defined twice ({module_name})")
            table[m.name] = m
    return table


METHODS: dict[str, QuantMethod] = _load_table()


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
