"""The catalog of step kinds: which modules register steps, and the look-ups by plan key and type.

compress's own step modules are listed in `BUILTIN_STEP_MODULES`; a package above compress (export,
or any later one) contributes its step modules through the `gpt2_edge.steps` entry-point group of its
distribution (pyproject.toml):

    [project.entry-points."gpt2_edge.steps"]
    export = "export.step"

Both are imported once, explicitly, by name or by group: nothing is discovered by scanning, and
compress never imports the packages above it by name. Adding a step kind to compress is one module
plus one line here.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from compress.errors import UserError
from compress.step_api import HANDLERS, StepConfig, StepHandler

# compress's own modules whose import registers step handlers (and so plan keys).
BUILTIN_STEP_MODULES: tuple[str, ...] = (
    "compress.source",
    "compress.distillation.step",
    "compress.pruning.step",
    "compress.quantization.step",
    "compress.sparsity.step",
    "compress.lowrank.step",
    "compress.finetune.step",
    "compress.qat.step",
)
STEP_GROUP = "gpt2_edge.steps"  # entry points: step modules of the packages above compress
REINSTALL = ("the installed gpt2-edge metadata has no 'gpt2_edge.steps' entry points (it was installed before "
             "step kinds came from them): reinstall it with `pip install -e .` in the checkout")
_LOADED: list[str] = []  # names of the entry points loaded (empty: none found)
_BUILTINS_LOADED = False


def _load_builtin_steps() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        for module in BUILTIN_STEP_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=STEP_GROUP):
            try:
                ep.load()  # the module registers its steps on import
            except ImportError as e:
                raise UserError(f"step entry point {ep.name} = {ep.value} ({STEP_GROUP}) cannot be imported "
                                f"({e}); if the checkout changed, reinstall it with `pip install -e .`") from None
            _LOADED.append(ep.name)
        _BUILTINS_LOADED = True


def step_configs() -> dict[str, type[StepConfig]]:
    """Plan key -> config class, for every registered step kind (the source steps are `model:`)."""
    _load_builtin_steps()
    return {cls.kind: cls for cls in HANDLERS if not cls.source}


def missing_steps_hint() -> str:
    """Why a plan key may be unknown beyond a typo: the entry points of the install are missing."""
    _load_builtin_steps()
    return "" if _LOADED else REINSTALL


def handler_for(config: StepConfig) -> StepHandler:
    """The handler of the config's class, or of the nearest registered base class (a step kind whose
    config class picks a subclass by a field, as `export` does by `format`)."""
    _load_builtin_steps()
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise TypeError(f"no handler registered for {type(config).__name__}")
