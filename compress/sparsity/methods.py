"""The table of sparsity methods: one `SparsityMethod` (registry.py) per module, by name (the plan's
`method:`). A method lives in one module that defines `METHOD = SparsityMethod(...)`; naming that module
in METHOD_MODULES registers it. Nothing outside the method's module compares method names.
"""

from __future__ import annotations

from compress.method_table import load_table
from compress.sparsity.registry import SparsityMethod

METHOD_MODULES: tuple[str, ...] = (
    "compress.sparsity.magnitude",
    "compress.sparsity.wanda",
    "compress.sparsity.sparsegpt",
)

METHODS: dict[str, SparsityMethod] = load_table(METHOD_MODULES, "sparsity")
