"""Read the text a plan's data section names (delegates to evalsuite.data)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalsuite import data as evaldata

if TYPE_CHECKING:
    from compress.plan import TextSource


def source_text(source: "TextSource") -> str:
    if source.path is not None:
        text = evaldata.read_text(source.path)
    elif source.hf is not None:
        text = evaldata.hf_text(source.hf, source.name, source.split or "test", source.column)
    else:
        text = evaldata.builtin_text(source.builtin or "python-docs", source.split or "train")
    return text[: source.max_chars] if source.max_chars else text
