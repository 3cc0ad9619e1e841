"""Imported on first use: package attributes (`lazy_exports`) and a method table's functions
(`lazy_function`). The plan's config classes, the step modules and the CLIs import compress packages
without importing torch (plan errors and --help answer fast: tests/test_cold_start.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LazyFunction:
    """A function named "package.module:function", imported on its first call: a method table lists
    what each method can do without importing the torch code that does it (plan validation reads the
    table; only running a step calls the function)."""

    target: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def resolve(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def lazy_function(target: str) -> LazyFunction:
    """lazy_function("compress.quantization.gptq:run_gptq")."""
    if target.count(":") != 1:
        raise ValueError(f"lazy_function takes 'package.module:function', not {target!r}")
    return LazyFunction(target)
