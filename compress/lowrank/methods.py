"""The table of factorization methods: one `LowRankMethod` (registry.py) per module, by name (the
plan's `method:`). A method lives in one module that defines `METHOD = LowRankMethod(...)`; naming that
module in METHOD_MODULES registers it.
"""

from __future__ import annotations

import importlib

from compress.lowrank.registry import LowRankMethod

METHOD_MODULES: tuple[str, ...] = ("compress.lowrank.svd", "compress.lowrank.whiten")


def _load() -> dict[str, LowRankMethod]:
    table: dict[str, LowRankMethod] = {}
    for module in METHOD_MODULES:
        m = importlib.import_module(module).METHOD
        if m.name in table:
            raise RuntimeError(f"low-rank method {m.name!r} is defined twice ({module})")
        table[m.name] = m
    return table


METHODS: dict[str, LowRankMethod] = _load()
