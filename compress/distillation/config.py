"""DistillConfig: the `distill` step's plan entry and the library's config object.

    - distill: {teacher: base, tokens: 2_000_000, temperature: 2.0,
                loss: {kl: 1.0, ce: 0.1, hidden: 0.1}, lr: 3.0e-4, batch_tokens: 16384}

Everything that can be checked without loading a model is checked here, so a bad entry fails at
plan time with its key path (`steps[1].distill.loss.kl`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo,
                      model_validator)

from compress.divergence import Guarded
from compress.model_shape import Shape, source_shape
from compress.plan_state import Check, Origin, PlanState, Problem
from compress.models import is_local_source
from compress.plan_types import ModelSource, Seed
from compress.step_api import StepConfig, Work

FUSED_HEAD_CHUNK = 512  # positions per chunk of the fused head: six (512, 50257) fp32 tensors are ~600 MB


def _teacher(value: str, info: ValidationInfo) -> str:
    """'base', or a model source checked like the plan's `model:` (resolved against the plan's dir)."""
    if value == "base":
        return value
    try:
        return TypeAdapter(ModelSource).validate_python(value, context=info.context)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


Teacher = Annotated[str, AfterValidator(_teacher)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LossWeights(_Strict):
    """Weight of each loss term; a term with weight 0 is not computed."""

    kl: float = Field(1.0, ge=0, le=1000, description="KL(teacher_T || student_T) * T^2")
    ce: float = Field(0.0, ge=0, le=1000, description="next-token cross-entropy on the text")
    hidden: float = Field(0.0, ge=0, le=1000, description="hidden-state loss over the layer mapping")

    @model_validator(mode="after")
    def _some_loss(self) -> "LossWeights":
        if self.kl + self.ce + self.hidden == 0:
            raise ValueError("at least one of kl, ce, hidden must be > 0")
        return self


class StudentInit(_Strict):
    """Build a fresh, shallower student from teacher blocks instead of taking the previous step's model.

    `n_layer: 3` keeps 3 evenly spaced teacher blocks (first and last included); `layers: [0, 2, 5]`
    names them. `n_inner` also slices every MLP to its n_inner largest-norm neurons.
    """

    init: Literal["teacher-layers"] = "teacher-layers"
    n_layer: int | None = Field(None, ge=1, le=96)
    layers: list[int] | None = Field(None, min_length=1, max_length=96)
    n_inner: int | None = Field(None, ge=1, le=65536)

    @model_validator(mode="after")
    def _depth(self) -> "StudentInit":
        if (self.n_layer is None) == (self.layers is None):
            raise ValueError("give exactly one of n_layer, layers")
        if self.layers is not None:
            if any(i < 0 for i in self.layers):
                raise ValueError("layers are teacher block indices, counted from 0")
            if sorted(set(self.layers)) != self.layers:
                raise ValueError("layers must be increasing and distinct")
        return self

    @property
    def depth(self) -> int:
        return self.n_layer if self.n_layer is not None else len(self.layers or [])


class DistillConfig(StepConfig, Guarded):
    """Distil a student GPT-2 from a teacher GPT-2 on data.train (KL + CE + hidden-state losses)."""

    kind: ClassVar[str] = "distill"
    distributed: ClassVar[bool] = True  # under torchrun every rank trains it (DDP); rank 0 writes
    changes_weights: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "train", "files"})  # files: a teacher dir
    omitted_when: ClassVar[dict[str, object]] = {"fused_head": False, "amp": "auto",
                                                 "optimizer": "adamw"}  # keys left out of the hash

    teacher: Teacher = Field("base", description="'base' (the plan's model), a model dir or an HF id")
    student: StudentInit | None = Field(None, description="default: the previous step's model")
    tokens: int = Field(2_000_000, ge=1000, le=10**12, description="training budget in tokens (all ranks)")
    temperature: float = Field(2.0, ge=0.1, le=100)
    loss: LossWeights = Field(default_factory=LossWeights)
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    hidden_layers: list[int] | None = Field(
        None, min_length=1, max_length=96,
        description="teacher block (from 0) matched by each student block; default: evenly spaced")

    lr: float = Field(3e-4, gt=0, le=1)
    warmup_steps: int = Field(50, ge=0, le=10**7)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0, le=1)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw; muon: Muon for the student blocks' matrices, AdamW for the rest "
                             "(compress.optimizers)")
    batch_tokens: int = Field(16384, ge=8, le=10**8, description="tokens per optimizer step, all ranks together")
    batch_size: int | None = Field(None, ge=1, le=4096, description="sequences per micro-batch per rank "
                                                                    "(instead of batch_tokens)")
    seq_len: int = Field(256, ge=8, le=8192)
    grad_accum: int = Field(1, ge=1, le=1024)
    grad_clip: float = Field(1.0, gt=0, le=1000)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: also on CPUs with AVX512-BF16/AMX "
                            "(else fp32, recorded); fp16: CUDA only; off: fp32 (compress.precision.resolve_precision)")
    fused_head: bool | None = Field(
        None, description="KL/CE from hidden states chunk by chunk, never the whole (tokens, vocab) logits "
                          "(distillation/fused_head.py); null: on when the step trains in fp32 (CPU by default), "
                          "off under autocast")

    eval_tokens: int = Field(16384, ge=0, le=10**8, description="tail of data.train held out for eval "
                                                                "and early stopping; 0: no eval")
    eval_every: int = Field(100, ge=1, le=10**7, description="optimizer steps between held-out evals")
    patience: int | None = Field(None, ge=1, le=10**4, description="stop after this many evals without "
                                                                   "improvement; null: never stop early")
    checkpoint_every: int = Field(100, ge=1, le=10**7, description="optimizer steps between checkpoints")
    seed: Seed = 0

    @model_validator(mode="after")
    def _shapes(self) -> "DistillConfig":
        if "batch_size" in self.model_fields_set and "batch_tokens" in self.model_fields_set:
            raise ValueError("give batch_tokens or batch_size, not both")
        if self.batch_size is None and self.batch_tokens < self.seq_len * self.grad_accum:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) is less than one sequence per micro-batch "
                             f"(seq_len * grad_accum = {self.seq_len * self.grad_accum})")
        if self.eval_tokens and self.eval_tokens <= self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must exceed seq_len ({self.seq_len}), or be 0")
        if self.patience is not None and not self.eval_tokens:
            raise ValueError("patience needs held-out evaluation (eval_tokens > 0)")
        if self.hidden_layers is not None and self.loss.hidden == 0:
            raise ValueError("hidden_layers is set but loss.hidden is 0")
        if self.hidden_layers is not None and self.student is not None \
                and len(self.hidden_layers) != self.student.depth:
            raise ValueError(f"hidden_layers has {len(self.hidden_layers)} entries for a "
                             f"{self.student.depth}-block student")
        return self

    def uses_fused_head(self, autocast: bool) -> bool:
        """Whether the head's losses run chunk by chunk: as set, else in fp32 training (the fused
        losses compute in fp32, exact to summation order; under autocast the plain head keeps bf16)."""
        return self.fused_head if self.fused_head is not None else not autocast

    def work(self) -> Work:
        # plan time assumes the CPU's fp32 (the estimate's machine), where null means fused
        chunked = self.fused_head is not False
        return replace(super().work(), logits_positions=FUSED_HEAD_CHUNK if chunked else None)

    def micro_batch(self, world_size: int = 1) -> int:
        """Sequences per micro-batch on each rank."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, round(self.batch_tokens / (self.seq_len * self.grad_accum * world_size)))

    def local_dirs(self) -> dict[str, str]:
        return {"teacher": self.teacher} if self.teacher != "base" and is_local_source(self.teacher) else {}

    def describe(self) -> str:
        who = "base" if self.teacher == "base" else self.teacher
        return (f"distill from {who}: {self.tokens:,} tokens, T={self.temperature}, "
                f"loss kl={self.loss.kl} ce={self.loss.ce} hidden={self.loss.hidden}")

    def check(self, state: PlanState) -> Check:
        """The student's shape: the previous model's, or the teacher's blocks (student: {...})."""
        problems = []
        if not state.train_data:
            problems.append(Problem("needs training text: set data.train in the plan"))
        if self.student is None and state.quantized is not None:
            problems.append(Problem(f"distill trains a full-precision student: move it before "
                                    f"{state.quantized.by}, or build the student from the teacher (student:)"))
        teacher = state.base if self.teacher == "base" else source_shape(self.teacher)
        if self.student is None:
            student, next_state = state.shape, state
        elif teacher is None:
            student = None
            next_state = replace(state, quantized=None).with_shape(
                None, unknown=f"{state.at} builds its student from a teacher of unknown shape")
        else:
            problems += _student_problems(self.student, teacher)
            student = replace(teacher, n_layer=self.student.depth, n_inner=self.student.n_inner or teacher.n_inner)
            built = Origin(f"{state.at} (student from {self.teacher} blocks)")
            made = {"n_layer": built, **({"n_inner": built} if self.student.n_inner else {}),
                    "*": Origin(f"the teacher {self.teacher} ({teacher.n_layer}x{teacher.n_embd})")}
            next_state = replace(state, quantized=None).with_shape(student, made)
        if state.sparsity is not None:  # every weight is trained: the zeros fill in
            problems.append(Problem(f"distill trains every weight: the zeros of {state.sparsity.by} fill in "
                                    "(distill before sparsify to keep them)", note=True))
            next_state = replace(next_state, sparsity=None)
        if student is not None and self.seq_len > student.n_positions:
            problems.append(Problem(f"{self.seq_len} exceeds the student's {student.n_positions} positions", "seq_len"))
        if teacher is not None and self.hidden_layers and max(self.hidden_layers) >= teacher.n_layer:
            problems.append(Problem(f"teacher blocks are 0..{teacher.n_layer - 1}", "hidden_layers"))
        if student is not None and self.hidden_layers and len(self.hidden_layers) != student.n_layer:
            problems.append(Problem(f"{len(self.hidden_layers)} entries for a {student.n_layer}-block student",
                                    "hidden_layers"))
        if teacher is not None and student is not None and None not in (teacher.vocab_size, student.vocab_size) \
                and teacher.vocab_size != student.vocab_size:
            problems.append(Problem(f"the teacher's vocabulary ({teacher.vocab_size}) differs from the student's "
                                    f"({student.vocab_size})", "teacher"))
        return next_state, problems


def _student_problems(init: StudentInit, teacher: Shape) -> list[Problem]:
    """The checks of distillation/student.py, before the teacher loads."""
    if init.layers is not None and max(init.layers) >= teacher.n_layer:
        return [Problem(f"teacher has {teacher.n_layer} blocks (0..{teacher.n_layer - 1})", "student.layers")]
    if init.n_layer is not None and init.n_layer > teacher.n_layer:
        return [Problem(f"{init.n_layer} exceeds the teacher's {teacher.n_layer} blocks", "student.n_layer")]
    if init.n_inner is not None and init.n_inner > teacher.n_inner:
        return [Problem(f"{init.n_inner} exceeds the teacher's MLP width {teacher.n_inner}", "student.n_inner")]
    return []
