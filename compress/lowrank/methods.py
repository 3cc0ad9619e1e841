"""The table of factorization methods: one `LowRankMethod` (registry.py) per module, by name (the
plan's `method:`). A method lives in one module that defines `METHOD = LowRankMethod(...)`; naming that
module in METHOD_MODULES registers it.
"""

from __future__ import annotations

from compress.lowrank.registry import LowRankMethod
from compress.method_table import load_table

METHOD_MODULES: tuple[str, ...] = ("compress.lowrank.svd", "compress.lowrank.whiten")

METHODS: dict[str, LowRankMethod] = load_table(METHOD_MODULES, "low-rank")
