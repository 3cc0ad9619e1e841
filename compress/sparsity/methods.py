"""The table of sparsity methods: one `SparsityMethod` (registry.py) per module, by name (the plan's
`method:`). A method lives in one module that defines `METHOD = SparsityMethod(...)`; naming that module
in METHOD_MODULES registers it. Nothing outside the method's module compares method names.
"""

from __future__ import annotations

import importlib

from compress.sparsity.registry import SparsityMethod

METHOD_MODULES: tuple[str, ...] = (
    "compress.sparsity.magnitude",
    "compress.sparsity.wanda",
    "compress.sparsity.sparsegpt",
)


def _load() -> dict[str, SparsityMethod]:
    table: dict[str, SparsityMethod] = {}
    for module in METHOD_MODULES:
        m = importlib.import_module(module).METHOD
        if m.name in table:
            raise RuntimeError(f"sparsity method {m.name!r} is defined twice ({module})")
        table[m.name] = m
    return table


METHODS: dict[str, SparsityMethod] = _load()
