"""QatConfig: the `qat` step's plan entry, quantization-aware training after a `quantize` step.

    - quantize: {method: gptq, bits: 4, group_size: 128}
    - qat: {tokens: 500_000, lr: 1.0e-4}

The model trains through the exact grid the quantize step chose (its codes, its zero points and its
scales: learned per group by default, or frozen),
distilling from the teacher (the plan's base model by default) on data.train, and is handed on in the
same quantized layout: same files, same exports, stock loaders unchanged.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from compress.distillation.config import Teacher
from compress.divergence import Guarded
from compress.plan_state import Check, PlanState, Problem
from compress.plan_types import SequenceBatches
from compress.step_api import StepConfig



class QatConfig(StepConfig, SequenceBatches, Guarded):
    """Train a quantized model through its own quantizer (fake quantization, straight-through estimator)."""

    kind: ClassVar[str] = "qat"
    changes_weights: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "train"})

    teacher: Teacher = Field("base", description="'base' (the plan's model), a model dir or an HF id")
    tokens: int = Field(500_000, ge=1000, le=10**12, description="training budget in tokens")
    temperature: float = Field(1.0, ge=0.1, le=100, description="of the KL to the teacher")
    kl: float = Field(1.0, ge=0, le=1000, description="weight of the KL to the teacher (0: no teacher forward)")
    ce: float = Field(0.0, ge=0, le=1000, description="weight of next-token cross-entropy on data.train")
    lr: float = Field(1e-4, gt=0, le=1, description="of the latent fp32 weights behind the codes")
    scales: Literal["learned", "frozen"] = Field("learned", description="learned: each group's scale trains "
                                                 "(as log(s / s_ptq)) beside the weights; frozen: the PTQ scales")
    scale_lr: float = Field(5e-3, gt=0, le=1, description="of log(scale) when scales are learned")
    warmup_steps: int = Field(10, ge=0, le=10**7)
    weight_decay: float = Field(0.0, ge=0, le=1)
    eval_tokens: int = Field(16384, ge=0, le=10**8, description="tail of data.train held out for eval, "
                                                                "early stopping and the best weights; 0: none")
    eval_every: int = Field(50, ge=1, le=10**7)
    patience: int | None = Field(None, ge=1, le=10**4, description="evals without improvement before stopping")
    checkpoint_every: int = Field(100, ge=1, le=10**7)

    @model_validator(mode="after")
    def _shapes(self) -> "QatConfig":
        if self.eval_tokens and self.eval_tokens <= self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must exceed seq_len ({self.seq_len}), or be 0")
        if not (self.kl or self.ce):
            raise ValueError("kl and ce are both 0: nothing to train toward (kl: 1 distils from the teacher)")
        if self.patience is not None and not self.eval_tokens:
            raise ValueError("patience needs held-out evaluation (eval_tokens > 0)")
        return self

    def describe(self) -> str:
        return f"qat from {self.teacher}: {self.tokens:,} tokens through the quantizer, lr {self.lr:g}"

    def check(self, state: PlanState) -> Check:
        from compress.quantization.methods import method

        problems = []
        if not state.train_data:
            problems.append(Problem("needs training text: set data.train in the plan"))
        q = state.quantized
        if q is None:
            problems.append(Problem("trains a quantized model: put it after a quantize step"))
        elif not method(q.method).layout.has_handoff:
            problems.append(Problem(f"{q.by} (method {q.method}) keeps no integer grid of ours to train through; "
                                    "qat takes rtn, gptq, awq and smoothquant"))
        if state.shape is not None and self.seq_len > state.shape.n_positions:
            problems.append(Problem(f"{self.seq_len} exceeds the model's {state.shape.n_positions} positions",
                                    "seq_len"))
        return state, problems
