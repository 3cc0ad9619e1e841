"""Value types of the plan schema: strict models, and paths resolved against the plan file's directory
(passed in the validation context as `base_dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from compress.errors import UserError
from compress.models import check_gpt2_dir, is_local_source


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
