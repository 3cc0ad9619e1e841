"""Check a tokenizer directory's JSON files before transformers reads them, so a malformed file is one
line naming it (transformers would fail deep inside with "'list' object has no attribute 'items'")."""

from __future__ import annotations

import json
from pathlib import Path

from evalsuite.errors import EvalInputError

JSON_OBJECT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                     "vocab.json")
MAX_BYTES = 256 << 20  # GPT-2's tokenizer.json is ~1.4 MB; a bigger file is not a tokenizer


def check_tokenizer_files(directory: str | Path) -> None:
    """EvalInputError naming the first file that is not a regular file holding a JSON object (and, for
    vocab.json, a token -> non-negative integer id table)."""
    directory = Path(directory)
    for name in JSON_OBJECT_FILES:
        file = directory / name
        if not file.exists():
            continue
        if not file.is_file():
            raise EvalInputError(f"{file}: not a regular file")
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise EvalInputError(f"{file}: {size:,} bytes, too large for a tokenizer file (limit {MAX_BYTES:,})")
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise EvalInputError(f"{file}: not UTF-8 JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise EvalInputError(f"{file}: expected a JSON object, got a {type(data).__name__}")
        if name == "vocab.json":
            bad = next(((t, i) for t, i in data.items() if type(i) is not int or i < 0), None)
            if bad is not None:
                raise EvalInputError(f"{file}: token {bad[0]!r} has id {bad[1]!r}; expected a non-negative integer")
