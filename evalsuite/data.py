"""Text sources and tokenization into one token stream.

Sources: a local file, a directory of .txt/.raw files (sorted, joined with "\\n\\n"), a Hugging Face
dataset (rows joined with "\\n\\n", as the HF perplexity guide does; needs `datasets` and the network),
and `python-docs`, English prose that every CPython install carries (the pydoc topic pages and the
standard library's docstrings), split into train and heldout parts by document.
"""

from __future__ import annotations

import ast
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

from evalsuite.errors import EvalInputError

if TYPE_CHECKING:
    import torch  # imported where tensors are made: plan validation reads text without torch

TEXT_SUFFIXES = (".txt", ".raw", ".md", ".text")
JOIN = "\n\n"
BUILTIN_SOURCES = ("python-docs",)
BUILTIN_SPLITS = ("train", "heldout", "all")
HELDOUT_EVERY = 20  # one document in 20 goes to the held-out split (5%)


def read_text(path: str | Path, max_chars: int | None = None) -> str:
    """The text of a file, or of every text file in a directory (sorted by name, joined)."""
    path = Path(path).expanduser()
    if path.is_dir():
        text = JOIN.join(_read_regular(f) for f in text_files(path))
    elif path.exists():
        text = _read_regular(path)
    else:
        raise EvalInputError(f"{path}: no such file or directory")
    if not text.strip():
        raise EvalInputError(f"{path}: the text is empty")
    return text[:max_chars] if max_chars else text


def text_files(path: Path) -> list[Path]:
    """The text files of a directory that read_text joins, sorted by name."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix in TEXT_SUFFIXES and not p.is_dir())
    if not files:
        raise EvalInputError(f"{path}: directory has no text files ({', '.join(TEXT_SUFFIXES)})")
    return files


MAX_TEXT_BYTES = 1 << 30  # one text file (WikiText-103 is 0.5 GB): more would not fit the token stream in memory


def _read_regular(path: Path) -> str:
    """A regular file's text; FIFOs, devices and sockets are refused unopened (they can block forever)."""
    if not path.is_file():
        raise EvalInputError(f"{path}: is not a regular file; text sources must be regular files")
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise EvalInputError(f"{path}: {size:,} bytes of text is more than the {MAX_TEXT_BYTES:,} a source may hold")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None


def hf_text(dataset: str, name: str | None = None, split: str = "test", column: str = "text") -> str:
    """Rows of a Hugging Face dataset joined with "\\n\\n" (needs `pip install datasets` and network)."""
    try:
        import datasets
    except ImportError:
        raise EvalInputError(f"hf: {dataset}: install the 'datasets' extra (pip install -e '.[datasets]')") from None
    rows = datasets.load_dataset(dataset, name, split=split)
    if column not in rows.column_names:
        raise EvalInputError(f"hf: {dataset}: no column {column!r} (has {rows.column_names})")
    return JOIN.join(rows[column])


@lru_cache(maxsize=1)
def _python_docs_documents() -> tuple[str, ...]:
    """Pydoc topic pages plus long stdlib docstrings, in a fixed order (same for one Python version)."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
    for file in sorted(stdlib.rglob("*.py")):
        if skip.intersection(file.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or use another encoding; not prose we need
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    docs.append(doc)
    return tuple(docs)


def builtin_text(name: str = "python-docs", split: str = "train") -> str:
    """The embedded corpus: ~1.7 MB of English prose from the running Python's own documentation."""
    if name not in BUILTIN_SOURCES:
        raise EvalInputError(f"builtin: unknown source {name!r} (known: {', '.join(BUILTIN_SOURCES)})")
    if split not in BUILTIN_SPLITS:
        raise EvalInputError(f"builtin: unknown split {split!r} (known: {', '.join(BUILTIN_SPLITS)})")
    docs = _python_docs_documents()
    if split == "all":
        return JOIN.join(docs)
    # Split by a hash of the content, not the position, so adding a document moves no other one.
    held = [zlib.crc32(d.encode()) % HELDOUT_EVERY == 0 for d in docs]
    return JOIN.join(d for d, h in zip(docs, held) if h == (split == "heldout"))


def tokenize(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one stream of token ids (1-D LongTensor), no special tokens added."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if not ids:
        raise EvalInputError("the text tokenizes to zero tokens")
    return torch.tensor(ids, dtype=torch.long)
