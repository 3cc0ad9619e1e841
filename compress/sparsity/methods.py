"""The table of sparsity methods: one `SparsityMethod` per module, by name (the plan's `method:`).

A method lives in one module that defines `METHOD = SparsityMethod(...)`; naming that module in
METHOD_MODULES registers it. Nothing outside the method's module compares method names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from compress.sparsity.calibrate import LayerStats
    from compress.sparsity.config import SparsifyConfig
    from compress.sparsity.pattern import Target

# prune(name, w [out, in], stats (None when the method does not calibrate), target, cfg) -> new w [out, in]
PruneFn = Callable[[str, "torch.Tensor", "LayerStats | None", "Target", "SparsifyConfig"], "torch.Tensor"]


@dataclass(frozen=True)
class SparsityMethod:
    name: str
    calibrates: bool  # reads calibration windows of data.train (block by block)
    hessian: bool  # needs the inputs' second moment H = mean x x^T (else only per-channel norms)
    prune: PruneFn
    summary: str = ""


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
