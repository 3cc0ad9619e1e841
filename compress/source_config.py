"""The plan's `model:`: its schema (a hub id, a local directory, or `{pretrain: {...}}`) and the source
step it becomes, the run's `00-base` (handlers in compress/source.py).

The source step is an ordinary registered step whose `check` gives plan validation its first state:
the shape of a local directory from its config.json, of a pretrained model from its config, and of a
GPT-2 family hub id from the configs the package carries (compress/model_shape.py). For another hub id
the shape is unknown: the checks that need it wait for the model to load.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from compress.divergence import Guarded
from compress.hashing import digest
from compress.model_shape import HUB_CONFIGS, Shape, source_shape
from compress.errors import UserError
from compress.models import check_tokenizer_dir, is_local_source, tokenizer_size
from compress.plan_state import Check, Origin, PlanState, Problem
from compress.plan_types import ExistingPath, ModelSource, Seed, Strict
from compress.step_inputs import StepInputs
from compress.step_api import StepConfig, Work


class TrainTokenizer(Strict):
    """Train a byte-level BPE tokenizer on the training text (with the `tokenizers` library)."""

    vocab_size: int = Field(4096, ge=260, le=65536)
    min_frequency: int = Field(2, ge=1, le=1000)


def _tokenizer_tag(v: Any) -> str:
    return "train" if isinstance(v, (dict, TrainTokenizer)) else "dir"


TokenizerSpec = Annotated[
    Annotated[ExistingPath, Tag("dir")] | Annotated[TrainTokenizer, Tag("train")],
    Discriminator(_tokenizer_tag)]


class PretrainConfig(Strict, Guarded):
    """Train a GPT-2 from scratch on data.train (the embedded default teacher)."""

    n_layer: int = Field(4, ge=1, le=48)
    n_embd: int = Field(256, ge=16, le=4096)
    n_head: int = Field(8, ge=1, le=64)
    n_positions: int = Field(256, ge=16, le=4096)
    tokenizer: TokenizerSpec = Field(default_factory=TrainTokenizer)
    seq_len: int = Field(128, ge=8, le=4096)
    batch_size: int = Field(16, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    tokens: int = Field(1_000_000, ge=1000, le=10**12, description="training budget in tokens")
    lr: float = Field(1e-3, gt=0, le=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: Seed = 0
    eval_every: int = Field(100, ge=1, description="steps between held-out evaluations")
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: also on CPUs with AVX512-BF16/AMX "
                            "(else fp32, recorded); off: fp32")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw; muon: Muon for the blocks' matrices, AdamW for the rest "
                             "(compress.optimizers; the quickstart's teacher matched AdamW in a third of the tokens)")
    omitted_when: ClassVar[dict[str, Any]] = {"amp": "auto", "optimizer": "adamw"}  # plans without them keep their hashes

    @model_validator(mode="after")
    def _shapes(self) -> "PretrainConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.seq_len > self.n_positions:
            raise ValueError(f"seq_len ({self.seq_len}) must not exceed n_positions ({self.n_positions})")
        return self


class PretrainModel(Strict):
    pretrain: PretrainConfig


def _model_tag(v: Any) -> str:
    return "pretrain" if isinstance(v, (dict, PretrainModel)) else "source"


ModelSpec = Annotated[
    Annotated[ModelSource, Tag("source")] | Annotated[PretrainModel, Tag("pretrain")],
    Discriminator(_model_tag)]


# -- the source steps ------------------------------------------------------------------------------

class LoadModel(StepConfig):
    """`model: gpt2` or `model: path/to/dir`: the model loaded and saved in fp32 as 00-base/model."""

    kind: ClassVar[str] = "base"
    source: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "files"})  # files: the model and tokenizer dirs

    model: str  # a hub id, or a local directory (already checked and resolved by the plan)
    tokenizer: str | None = None  # the plan's `tokenizer:` (default: the model's own)

    def local_dirs(self) -> dict[str, str]:
        dirs = {"model": self.model} if is_local_source(self.model) else {}
        return dirs | ({"tokenizer": self.tokenizer} if self.tokenizer else {})

    def describe(self) -> str:
        return f"load {self.model}"

    def check(self, state: PlanState) -> Check:
        shape = source_shape(self.model)
        if shape is None:
            why = (f"model {self.model!r} is not a GPT-2 whose config the package carries "
                   f"({', '.join(HUB_CONFIGS)}): its widths are checked when each step loads it")
            return state.with_shape(None, unknown=why), [Problem(why, note=True)]
        origin = Origin(f"model {self.model} ({shape.n_layer}x{shape.n_embd}, {shape.n_head} heads)")
        problems = []
        if state.eval_seq_len is not None and state.eval_seq_len > shape.n_positions:
            problems.append(Problem(f"data.eval.seq_len ({state.eval_seq_len}) exceeds the model's "
                                    f"{shape.n_positions} positions"))
        problems += self._tokenizer_problems(shape)
        return replace(state, base=shape).with_shape(shape, {"*": origin}), problems

    def _tokenizer_problems(self, shape: Shape) -> list[Problem]:
        """A tokenizer that makes ids the model has no embedding for fails at plan time, not mid-run."""
        tok_dir = self.tokenizer or (self.model if is_local_source(self.model) else None)
        if tok_dir is None or shape.vocab_size is None:
            return []
        try:
            n = tokenizer_size(check_tokenizer_dir(tok_dir))
        except UserError as e:
            return [Problem(str(e))]
        if n > shape.vocab_size:
            return [Problem(f"the tokenizer ({tok_dir}) makes {n:,} token ids, the model embeds only "
                            f"vocab_size {shape.vocab_size:,}: use the model's own tokenizer",
                            )]
        return []

    def content_hash(self, prev: str | None, inputs: StepInputs) -> str:
        # a local directory by its files' content (inputs' files), a hub id by its name
        return digest("base", None if is_local_source(self.model) else self.model, inputs.key())


class PretrainBase(StepConfig):
    """`model: {pretrain: {...}}`: a GPT-2 trained from scratch on data.train, saved as 00-base/model."""

    kind: ClassVar[str] = "base"
    source: ClassVar[bool] = True
    # eval_text: the held-out loss during training; files: a tokenizer directory
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "train", "eval_text", "files"})

    pretrain: PretrainConfig
    tokenizer: str | None = None  # the plan's `tokenizer:` (instead of pretrain.tokenizer)

    def local_dirs(self) -> dict[str, str]:
        tok = self.tokenizer or (self.pretrain.tokenizer if isinstance(self.pretrain.tokenizer, str) else None)
        return {"tokenizer": tok} if tok else {}

    def describe(self) -> str:
        cfg = self.pretrain
        return f"pretrain {cfg.n_layer}x{cfg.n_embd} on data.train for {cfg.tokens:,} tokens"

    def work(self) -> Work:
        cfg = self.pretrain
        vocab = cfg.tokenizer.vocab_size if isinstance(cfg.tokenizer, TrainTokenizer) else None
        return Work(train_tokens=cfg.tokens, batch=cfg.batch_size, seq_len=cfg.seq_len, vocab_size=vocab)

    def check(self, state: PlanState) -> Check:
        cfg = self.pretrain
        # vocab_size unknown: a trained tokenizer has at most tokenizer.vocab_size tokens (fewer when the
        # text has fewer merges), a tokenizer dir is not read at plan time
        shape = Shape(n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                      n_inner=4 * cfg.n_embd, n_positions=cfg.n_positions, vocab_size=None)
        origin = Origin(f"model.pretrain ({cfg.n_layer}x{cfg.n_embd}, {cfg.n_head} heads)")
        return replace(state, base=shape).with_shape(shape, {"*": origin}), []

    def content_hash(self, prev: str | None, inputs: StepInputs) -> str:
        return digest("base", {"pretrain": self.pretrain.model_dump(mode="json")}, inputs.key())


def source_step(model: "ModelSpec", tokenizer: str | None) -> StepConfig:
    """The step that makes the plan's base model (step 0, `00-base`) from its `model:` and `tokenizer:`."""
    if isinstance(model, PretrainModel):
        return PretrainBase(pretrain=model.pretrain, tokenizer=tokenizer)
    return LoadModel(model=model, tokenizer=tokenizer)
