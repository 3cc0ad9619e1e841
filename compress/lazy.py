"""Package attributes imported on first use: the plan's config classes, the step modules and the CLIs
import compress packages without importing torch (plan errors and --help answer fast:
tests/test_cold_start.py)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, names: dict[str, str | tuple[str, str]]) -> tuple[Callable[[str], Any], list[str]]:
    """(__getattr__, __all__) of `package`: name -> the module that defines it, or (module, attribute)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = names[name]
        module, attr = target if isinstance(target, tuple) else (target, name)
        return getattr(import_module(module), attr)

    return __getattr__, sorted(names)
