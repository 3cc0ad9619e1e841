"""A byte-level GPT-2 tokenizer written by hand (256 bytes + <|endoftext|>, no merges): made in
milliseconds, where training one (tests/conftest.py's byte_tokenizer) takes seconds on a busy machine."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def bytes_tokenizer(tmp_path_factory):
    from transformers import GPT2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    path = tmp_path_factory.mktemp("bytes_tokenizer")
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())} | {"<|endoftext|>": 256}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return GPT2TokenizerFast(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
