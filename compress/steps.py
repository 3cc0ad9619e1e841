"""The step registry: one pydantic config class and one handler function per step kind.

A step kind is added by writing its config class (a `StepConfig` subclass with `kind = "..."`) and
decorating its handler with `@register_step(ThatConfig)`; the runner looks the handler up by the
config's type. Modules that define built-in steps are listed in `BUILTIN_STEP_MODULES` and imported
once, explicitly, so nothing is discovered by scanning names.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch  # annotations only: plan validation must not import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

    from compress.plan import Plan

# Modules whose import registers a step handler (and so a plan key). Later steps append here.
BUILTIN_STEP_MODULES: tuple[str, ...] = (
    "compress.distillation.step",
    "compress.pruning.step",
    "compress.quantization.step",
    "export.step",
)


class StepConfig(BaseModel):
    """Base of every step's config: unknown keys are errors, values are bounded by their fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]  # the plan key: `- prune: {...}`
    produces: ClassVar[str] = "torch"  # "torch" (a model dir the next step takes) or an artifact backend

    def slug(self) -> str:
        """The step directory's suffix: `01-<slug>`."""
        return self.kind

    def describe(self) -> str:
        """One line for --dry-run: what this step will do."""
        args = ", ".join(f"{k}={v}" for k, v in self.model_dump(exclude_defaults=True).items())
        return f"{self.kind}({args})"

    def plan_problems(self, plan: "Plan", index: int) -> list[str]:
        """Problems that involve other parts of the plan (e.g. an export after a non-exportable step)."""
        return []


@dataclass
class StepContext:
    """What a step handler gets besides its config."""

    plan: "Plan"
    name: str  # run-dir name of this step, e.g. "01-prune"
    out_dir: Path  # write outputs here; renamed into place only when the step succeeds
    work_dir: Path  # survives a killed run: checkpoints for resuming long steps
    input_dir: Path  # the previous torch model (save_pretrained directory, tokenizer beside it)
    base_dir: Path  # the plan's base model directory (the usual teacher)
    device: torch.device
    log: logging.Logger
    progress: bool = True  # show progress bars (off with `compress.run -q` and on torchrun ranks > 0)
    _cache: dict[str, Any] = field(default_factory=dict)

    def load_input(self) -> "GPT2LMHeadModel":
        from compress.models import load_model

        return load_model(self.input_dir).to(self.device)

    def tokenizer(self) -> "PreTrainedTokenizerBase":
        if "tokenizer" not in self._cache:
            from compress.models import load_tokenizer

            self._cache["tokenizer"] = load_tokenizer(self.input_dir)
        return self._cache["tokenizer"]

    def train_ids(self) -> torch.Tensor:
        """The plan's training text (data.train) as one token stream."""
        if "train_ids" not in self._cache:
            from compress.data import source_text
            from evalsuite.data import tokenize

            if self.plan.data.train is None:
                from compress.errors import UserError

                raise UserError(f"step {self.name} needs training text: set data.train in the plan")
            self._cache["train_ids"] = tokenize(source_text(self.plan.data.train), self.tokenizer())
        return self._cache["train_ids"]

    def save_model(self, model: "GPT2LMHeadModel", subdir: str = "model") -> Path:
        from compress.models import save_model

        return save_model(model, self.out_dir / subdir, self.tokenizer())


@dataclass
class StepOutput:
    """What a handler returns. `model_dir` (a torch model it saved) becomes the next step's input;
    `artifact` (e.g. "model.onnx") is evaluated with the runner of `backend` (evalsuite.backends)."""

    summary: str  # "what changed", one line for the report
    model_dir: str | None = None  # relative to the step dir
    artifact: str | None = None  # relative to the step dir
    backend: str = "torch"
    info: dict[str, Any] = field(default_factory=dict)  # recorded in step.json


StepHandler = Callable[[Any, StepContext], StepOutput]
_HANDLERS: dict[type[StepConfig], StepHandler] = {}
_BUILTINS_LOADED = False


def register_step(config_cls: type[StepConfig]) -> Callable[[StepHandler], StepHandler]:
    """Decorator: `fn(config, ctx) -> StepOutput` handles configs of exactly this type."""
    if not getattr(config_cls, "kind", None):
        raise TypeError(f"{config_cls.__name__} needs a class attribute kind = '...'")

    def decorate(fn: StepHandler) -> StepHandler:
        _HANDLERS[config_cls] = fn
        return fn

    return decorate


def _load_builtin_steps() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        for module in BUILTIN_STEP_MODULES:
            importlib.import_module(module)
        _BUILTINS_LOADED = True


def step_configs() -> dict[str, type[StepConfig]]:
    """Plan key -> config class, for every registered step kind."""
    _load_builtin_steps()
    return {cls.kind: cls for cls in _HANDLERS}


def handler_for(config: StepConfig) -> StepHandler:
    _load_builtin_steps()
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no handler registered for {type(config).__name__}") from None
