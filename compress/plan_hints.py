""""did you mean" for an unknown plan key: the closest field name of the model(s) that hold it."""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag


def close_key(root: type, loc: tuple) -> str | None:
    """The closest valid key (difflib) to the unknown key loc[-1], among the fields of the model(s) that
    hold it: the location is walked from `root` through field types, list items and union tags."""
    models = _models_in(root)
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list index: the item types are already the candidates
        tagged = [(cls, None) for cls, tag in models if tag == part]
        if tagged:  # pydantic names the union member it tried (Tag("pretrain")) in the location
            models = tagged
            continue
        models = [m for cls, _ in models if part in cls.model_fields for m in _models_in(cls.model_fields[part].annotation)]
        if not models:
            return None
    known = {f.alias or name for cls, _ in models for name, f in cls.model_fields.items()}
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _models_in(annotation: Any, tag: str | None = None) -> list[tuple[type, str | None]]:
    """(pydantic model class, its union Tag) for every model an annotation can hold (unions, Annotated,
    Optional, list / dict items)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), tag)
        return _models_in(base, tag)
    if origin in (Union, UnionType, list, tuple, set, frozenset):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    if origin is dict:
        return _models_in(get_args(annotation)[-1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, tag)]
    return []
