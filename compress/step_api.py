"""What a step is: one pydantic config class and one handler function per step kind.

A step kind is added by writing its config class (a `StepConfig` subclass with `kind = "..."`, the
plan inputs it `reads`, and a `check(state)` for plan time) and decorating its handler with
`@register_step(ThatConfig)`. This module only holds the types and the table the decorator fills;
which modules are imported to fill it, and the look-ups by plan key or config type, are
compress/catalog.py's (so a step module imports this one and nothing imports it back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from compress.errors import UserError
from compress.hashing import digest
from compress.plan_state import Check, PlanState
from compress.step_inputs import StepInputs

if TYPE_CHECKING:
    import torch  # annotations only: plan validation must not import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Work:
    """What a step computes (StepConfig.work), for --dry-run's estimate (compress.cost): tokens it trains,
    tokens it only runs forward."""

    train_tokens: int = 0  # forward + backward of the step's output model
    forward_tokens: int = 0  # forward only, of the step's input model (calibration)
    teacher: str | None = None  # "base", or a model dir / hub id whose forward runs beside training
    batch: int = 1  # sequences per forward (activations)
    seq_len: int = 256
    lora: bool = False  # trains adapters only: no gradients or AdamW moments for the full weights
    vocab_size: int | None = None  # at most this many tokens, where the shape does not know (a tokenizer to train)
    logits_positions: int | None = None  # positions whose logits a training step holds at once; None: the micro-batch


class StepConfig(BaseModel):
    """Base of every step's config: unknown keys are errors, values are bounded by their fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]  # the plan key: `- prune: {...}`
    source: ClassVar[bool] = False  # makes the run's first model from nothing (the `model:` of the plan)
    changes_weights: ClassVar[bool] = False  # its model is compared with its input's (eval.max_ppl_ratio)
    # The plan inputs the step reads (compress.step_inputs): the runner hands it these and no others,
    # and its content hash covers exactly them, by content.
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "train"})

    def slug(self) -> str:
        """The step directory's suffix: `01-<slug>`."""
        return self.kind

    def describe(self) -> str:
        """One line for --dry-run: what this step will do."""
        args = ", ".join(f"{k}={v}" for k, v in self.model_dump(exclude_defaults=True).items())
        return f"{self.kind}({args})"

    def local_dirs(self) -> dict[str, str]:
        """Local directories or files the step reads besides its input model (a teacher dir...), by role.
        A step that has any declares "files" in `reads`: their content is then part of its hash."""
        return {}

    def check(self, state: PlanState) -> Check:
        """Plan time, before any model loads: the state of the model this step leaves, and the problems
        of this step with the model it receives (`state`: its shape, quantization, who made them)."""
        return state, []

    def work(self) -> Work:
        """What the step computes, for --dry-run's estimate of its time, disk and memory (compress.cost).
        This default reads the fields steps share by convention: `tokens` (a training budget),
        `calib_tokens` or `calib_samples` x `calib_seq_len` (forward-only calibration), `teacher`,
        `batch_size` (or `batch_tokens` / `seq_len` / `grad_accum`), `seq_len`, `lora`. A step whose
        work is something else overrides it."""
        get = lambda name: getattr(self, name, None)  # noqa: E731
        seq_len = get("seq_len") or get("calib_seq_len") or 256
        batch = get("batch_size") or (get("batch_tokens") or seq_len) // seq_len // (get("grad_accum") or 1)
        calib = get("calib_tokens") or (get("calib_samples") or 0) * (get("calib_seq_len") or 0)
        teacher = get("teacher")
        return Work(train_tokens=get("tokens") or 0, forward_tokens=calib, teacher=teacher if isinstance(teacher, str)
                    else None, batch=max(1, batch), seq_len=seq_len, lora=get("lora") is not None)

    def own_texts(self) -> dict[str, Any]:
        """The text sources of the step's own config, by role (read with `reads` including "texts"):
        their content is part of its hash, and `StepContext.text_ids(role)` tokenizes them."""
        return {}

    def content_hash(self, prev: str | None, inputs: StepInputs) -> str:
        """The hash that decides whether the step's directory can be reused: its input's hash, its kind
        and config, and the plan inputs it declared (texts by content)."""
        return digest(prev, self.kind, self.model_dump(mode="json"), inputs.key())


@dataclass
class StepContext:
    """What a step handler gets besides its config."""

    inputs: StepInputs  # the plan inputs the step declared (seed, data.train, ...), nothing else of the plan
    name: str  # run-dir name of this step, e.g. "01-prune"
    out_dir: Path  # write outputs here; renamed into place only when the step succeeds
    work_dir: Path  # survives a killed run: checkpoints for resuming long steps
    input_dir: Path | None  # the previous torch model (save_pretrained directory, tokenizer beside it);
    #                         None for a source step
    base_dir: Path | None  # the plan's base model directory (the usual teacher); None for a source step
    device: torch.device
    log: logging.Logger
    progress: bool = True  # show progress bars (off with `compress.run -q` and on torchrun ranks > 0)
    # The run's cache, shared by all its steps: the tokenizer and the tokenized train/eval streams are
    # made once per run (every step keeps the base model's tokenizer).
    cache: dict[str, Any] = field(default_factory=dict)

    def load_input(self) -> "GPT2LMHeadModel":
        from compress.models import load_model

        return load_model(self.input_dir).to(self.device)

    def tokenizer(self) -> "PreTrainedTokenizerBase":
        if "tokenizer" not in self.cache:
            from compress.models import load_tokenizer

            self.cache["tokenizer"] = load_tokenizer(self.base_dir or self.input_dir)
        return self.cache["tokenizer"]

    def train_ids(self) -> torch.Tensor:
        """The plan's training text (data.train) as one token stream."""
        if self.inputs.train is None:
            raise UserError(f"step {self.name} needs training text: set data.train in the plan")
        return self._tokens("train_ids", self.inputs.train.source)

    def eval_ids(self) -> torch.Tensor:
        """The plan's evaluation text (data.eval) as one token stream."""
        return self._tokens("eval_ids", self.inputs.eval.source)

    def text_ids(self, role: str) -> torch.Tensor:
        """One of the step's own texts (`own_texts()`, e.g. finetune's `data:`) as one token stream."""
        text = self.inputs.texts[role]
        return self._tokens(f"text:{text.digest}:{text.source.model_dump_json()}", text.source)

    @property
    def has_train_text(self) -> bool:
        return self.inputs.train is not None

    def _tokens(self, key: str, source) -> torch.Tensor:
        if key not in self.cache:
            from compress.data import source_text
            from evalsuite.data import tokenize

            self.cache[key] = tokenize(source_text(source), self.tokenizer())
        return self.cache[key]

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
HANDLERS: dict[type[StepConfig], StepHandler] = {}  # filled by @register_step; read by compress.catalog


def register_step(config_cls: type[StepConfig]) -> Callable[[StepHandler], StepHandler]:
    """Decorator: `fn(config, ctx) -> StepOutput` handles configs of exactly this type."""
    if not getattr(config_cls, "kind", None):
        raise TypeError(f"{config_cls.__name__} needs a class attribute kind = '...'")

    def decorate(fn: StepHandler) -> StepHandler:
        HANDLERS[config_cls] = fn
        return fn

    return decorate
