"""Value types of the plan schema: strict models, and paths resolved against the plan file's directory
(passed in the validation context as `base_dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from compress.errors import UserError
from compress.models import check_gpt2_dir, is_local_source
from evalsuite.data import BUILTIN_SOURCES, BUILTIN_SPLITS


# Every seed of a plan: torch, numpy and Python generators all take this range.
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="random seed, 0 .. 2**31-1")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base_dir", "."))


def _resolve_path(value: str, info: ValidationInfo) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (_base_dir(info) / path).resolve())


def _existing_path(value: str, info: ValidationInfo) -> str:
    resolved = _resolve_path(value, info)
    if not Path(resolved).exists():
        raise ValueError(f"no such file or directory: {resolved}")
    return resolved


def _model_source(value: str, info: ValidationInfo) -> str:
    """A local GPT-2 directory (checked now) or a Hugging Face hub id (checked when loaded)."""
    candidate = Path(_resolve_path(value, info))
    if candidate.exists() or is_local_source(value):
        try:
            return str(check_gpt2_dir(candidate))
        except UserError as e:
            raise ValueError(str(e)) from None
    return value


PlanPath = Annotated[str, AfterValidator(_resolve_path)]
ExistingPath = Annotated[str, AfterValidator(_existing_path)]
ModelSource = Annotated[str, AfterValidator(_model_source)]


class TextSource(Strict):
    """Exactly one of: a local file/dir (`path`), a HF dataset (`hf`), or `builtin: python-docs`."""

    path: ExistingPath | None = None
    hf: str | None = None
    builtin: Literal[BUILTIN_SOURCES] | None = None  # type: ignore[valid-type]
    name: str | None = None  # HF dataset config, e.g. wikitext-2-raw-v1
    split: str | None = None  # HF split, or train/heldout/all for builtin
    column: str = "text"
    max_chars: int | None = Field(None, ge=1000)

    @model_validator(mode="after")
    def _one_source(self) -> "TextSource":
        given = [k for k in ("path", "hf", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hf, builtin (got {', '.join(given) or 'none'})")
        if self.builtin and self.split and self.split not in BUILTIN_SPLITS:
            raise ValueError(f"split must be one of {', '.join(BUILTIN_SPLITS)} for builtin text")
        return self


Amp = Literal["auto", "bf16", "fp16", "off"]


class SequenceBatches(BaseModel):
    """The batch and schedule settings finetune and qat share (the one training loop reads them)."""

    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per micro-batch")
    seq_len: int = Field(256, ge=8, le=8192)
    grad_accum: int = Field(1, ge=1, le=1024)
    grad_clip: float = Field(1.0, gt=0, le=1000)
    amp: Amp = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU; bf16: also on CPUs with "
                                         "AVX512-BF16/AMX (else fp32, recorded); off: fp32")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum
