"""Read the text a plan's data section names (delegates to evalsuite.data), and digest it by content."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from compress.hashing import DigestCache, digest
from evalsuite import data as evaldata

if TYPE_CHECKING:
    from compress.plan_types import TextSource


def source_text(source: "TextSource") -> str:
    if source.path is not None:
        text = evaldata.read_text(source.path)
    elif source.hf is not None:
        text = evaldata.hf_text(source.hf, source.name, source.split or "test", source.column)
    else:
        text = evaldata.builtin_text(source.builtin or "python-docs", source.split or "train")
    return text[: source.max_chars] if source.max_chars else text


def text_digest(source: "TextSource", cache: DigestCache) -> str:
    """What the text of a source is, by content: the sha256 of each file a `path` source reads (the
    files evalsuite.data.read_text joins). A `builtin` text is fixed by the Python that carries it; an
    `hf` dataset is named by id, config and split (its rows are not fetched to hash them)."""
    if source.path is not None:
        path = Path(source.path).expanduser()
        files = evaldata.text_files(path) if path.is_dir() else [path]
        return digest("files", cache.files(path if path.is_dir() else path.parent, files))
    if source.hf is not None:
        return digest("hf", source.hf, source.name, source.split, source.column)
    return digest("builtin", source.builtin, source.split, sys.version)
