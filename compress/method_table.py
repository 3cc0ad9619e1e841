"""Method tables by name (sparsity, low-rank): each method module named in a package's
METHOD_MODULES defines `METHOD` (one entry) or `METHODS` (a tuple); imported once, explicitly: nothing
is discovered."""

from __future__ import annotations

import importlib
from typing import Any


def load_table(modules: tuple[str, ...], kind: str) -> dict[str, Any]:
    """name -> entry, in module order; a name defined twice is a programming error."""
    table: dict[str, Any] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for m in getattr(module, "METHODS", None) or (module.METHOD,):
            if m.name in table:
                raise RuntimeError(f"{kind} method {m.name!r} is defined twice ({module_name})")
            table[m.name] = m
    return table
