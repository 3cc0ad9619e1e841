"""The catalog of step kinds: which module registers each plan key, and the look-ups by plan key and type.

compress's own step modules are listed in `BUILTIN_STEP_MODULES` by plan key; a package above
compress (export, or any later one) contributes its step modules through the `gpt2_edge.steps`
entry-point group of its distribution (pyproject.toml), the entry point named by its plan key:

    [project.entry-points."gpt2_edge.steps"]
    export = "export.step"

A step module is imported the first time its plan key is looked up (a plan that prunes imports the
prune step and no other), explicitly by name or by group: nothing is discovered by scanning, and
compress never imports the packages above it by name. Step modules import torch only inside their
handlers, so plan validation imports no torch (tests/test_cold_start.py). Adding a step kind to
compress is one module plus one line here.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points

from compress.errors import UserError
from compress.step_api import HANDLERS, StepConfig, StepHandler

# plan key -> the compress module whose import registers that step kind (config class and handler).
BUILTIN_STEP_MODULES: dict[str, str] = {
    "distill": "compress.distillation.step",
    "prune": "compress.pruning.step",
    "quantize": "compress.quantization.step",
    "sparsify": "compress.sparsity.step",
    "factorize": "compress.lowrank.step",
    "finetune": "compress.finetune.step",
    "qat": "compress.qat.step",
}
SOURCE_MODULES: tuple[str, ...] = ("compress.source",)  # the plan's `model:` (source steps, not plan keys)
STEP_GROUP = "gpt2_edge.steps"  # entry points: step modules of the packages above compress, named by plan key
REINSTALL = ("the installed gpt2-edge metadata has no 'gpt2_edge.steps' entry points (it was installed before "
             "step kinds came from them): reinstall it with `pip install -e .` in the checkout")
_LOADED: list[str] = []  # names of the entry points loaded
_IMPORTED: set[str] = set()  # step modules imported so far


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=STEP_GROUP)}


def _import(module: str, ep: EntryPoint | None = None) -> None:
    if module in _IMPORTED:
        return
    if ep is None:
        importlib.import_module(module)
    else:
        try:
            ep.load()  # the module registers its steps on import
        except ImportError as e:
            raise UserError(f"step entry point {ep.name} = {ep.value} ({STEP_GROUP}) cannot be imported "
                            f"({e}); if the checkout changed, reinstall it with `pip install -e .`") from None
        _LOADED.append(ep.name)
    _IMPORTED.add(module)


def _registered() -> dict[str, type[StepConfig]]:
    return {cls.kind: cls for cls in HANDLERS if not cls.source}


def step_kinds() -> list[str]:
    """Every plan key, without importing any step module: the built-in ones, the entry points', and
    those registered at run time (a step module imported by hand, a test's)."""
    return list(dict.fromkeys([*BUILTIN_STEP_MODULES, *_entry_points(), *_registered()]))


def step_config(kind: str) -> type[StepConfig] | None:
    """The config class of plan key `kind`, importing the one module that registers it; None if unknown."""
    for module in SOURCE_MODULES:
        _import(module)
    if kind not in _registered():
        if kind in BUILTIN_STEP_MODULES:
            _import(BUILTIN_STEP_MODULES[kind])
        elif (ep := _entry_points().get(kind)) is not None:
            _import(ep.value, ep)
    return _registered().get(kind)


class StepCatalog(Mapping):
    """Plan key -> config class; a key's module is imported when its class is first read."""

    def __getitem__(self, kind: str) -> type[StepConfig]:
        cls = step_config(kind)
        if cls is None and kind in step_kinds():
            raise TypeError(f"the module of plan key {kind!r} registers no step kind {kind!r}")
        if cls is None:
            raise KeyError(kind)
        return cls

    def __contains__(self, kind: object) -> bool:
        return kind in step_kinds()

    def __iter__(self) -> Iterator[str]:
        return iter(step_kinds())

    def __len__(self) -> int:
        return len(step_kinds())


def step_configs() -> StepCatalog:
    """Plan key -> config class, for every step kind (the source steps are `model:`); lazy per key."""
    return StepCatalog()


def missing_steps_hint() -> str:
    """Why a plan key may be unknown beyond a typo: the entry points of the install are missing."""
    return "" if _entry_points() else REINSTALL


def handler_for(config: StepConfig) -> StepHandler:
    """The handler of the config's class, or of the nearest registered base class (a step kind whose
    config class picks a subclass by a field, as `export` does by `format`)."""
    step_config(config.kind)
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise TypeError(f"no handler registered for {type(config).__name__}")
