"""FinetuneConfig: the `finetune` step's plan entry (causal-LM fine-tuning on the user's own text).

    - finetune: {data: {path: tickets/}, tokens: 500_000, lr: 1.0e-4, patience: 3,
                 lora: {r: 8, alpha: 16, targets: [attn.c_attn, mlp.c_fc]}}

`data` is the step's own text (not data.train), its held-out part is `heldout` when given, else the
last `heldout_fraction` of its tokens. Both texts are part of the step's hash by content (the
"texts" input, compress.step_inputs). Without `lora` every weight trains (full fine-tuning).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from compress.divergence import Guarded
from compress.plan_state import Check, PlanState, Problem
from compress.plan_types import SequenceBatches, Strict, TextSource
from compress.step_api import StepConfig

# GPT-2's projections (Conv1D), as LoRA target names: a suffix of the module path.
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
Projection = Literal[PROJECTIONS]  # type: ignore[valid-type]


class LoraOptions(Strict):
    """Low-rank adapters (peft LoRA) on the chosen projections, merged into the weights at the end."""

    r: int = Field(8, ge=1, le=1024, description="adapter rank")
    alpha: float = Field(16.0, gt=0, le=10_000, description="scaling: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input while training")
    targets: list[Projection] = Field(default_factory=lambda: list(PROJECTIONS), min_length=1, max_length=4,
                                      description="projections that get adapters (every block)")

    @model_validator(mode="after")
    def _distinct(self) -> "LoraOptions":
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must be distinct")
        return self


class FinetuneConfig(StepConfig, SequenceBatches, Guarded):
    """Fine-tune the current model on the user's own text (full, or LoRA merged back)."""

    kind: ClassVar[str] = "finetune"
    changes_weights: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "texts"})  # its own texts, never data.train

    data: TextSource = Field(description="the text to fine-tune on (path, hf or builtin)")
    heldout: TextSource | None = Field(None, description="held-out text for early stopping; default: the "
                                                         "last heldout_fraction of data's tokens")
    heldout_fraction: float = Field(0.1, gt=0, le=0.5, description="share of data's tokens held out "
                                                                   "(when heldout is not given)")
    tokens: int = Field(1_000_000, ge=1000, le=10**12, description="training budget in tokens")
    lr: float = Field(1e-4, gt=0, le=1)
    warmup_steps: int = Field(20, ge=0, le=10**7)
    weight_decay: float = Field(0.01, ge=0, le=1)
    lora: LoraOptions | None = Field(None, description="null: full fine-tuning")
    eval_every: int = Field(50, ge=1, le=10**7, description="optimizer steps between held-out evals")
    eval_tokens: int = Field(16384, ge=8, le=10**8, description="held-out tokens scored per eval (at most)")
    patience: int | None = Field(3, ge=1, le=10**4, description="stop after this many evals without "
                                                                "improvement; null: never stop early")
    checkpoint_every: int = Field(100, ge=1, le=10**7, description="optimizer steps between checkpoints")

    @model_validator(mode="after")
    def _shapes(self) -> "FinetuneConfig":
        if self.heldout is not None and "heldout_fraction" in self.model_fields_set:
            raise ValueError("give heldout or heldout_fraction, not both")
        if self.eval_tokens < self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must be at least seq_len ({self.seq_len})")
        return self

    def own_texts(self) -> dict[str, Any]:
        return {"data": self.data} | ({"heldout": self.heldout} if self.heldout is not None else {})

    def describe(self) -> str:
        how = (f"LoRA r={self.lora.r} on {', '.join(self.lora.targets)}, merged" if self.lora else "full")
        what = self.data.path or self.data.hf or f"builtin {self.data.builtin}"
        return f"finetune ({how}) on {what}: {self.tokens:,} tokens, lr {self.lr:g}"

    def check(self, state: PlanState) -> Check:
        problems = []
        if state.quantized is not None:
            problems.append(Problem(f"fine-tunes a full-precision model: move it before {state.quantized.by} "
                                    "(after quantize, train with a qat step)"))
        if state.shape is not None and self.seq_len > state.shape.n_positions:
            problems.append(Problem(f"{self.seq_len} exceeds the model's {state.shape.n_positions} positions",
                                    "seq_len"))
        return state, problems
