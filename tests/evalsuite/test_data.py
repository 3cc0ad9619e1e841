import pytest

from evalsuite.data import builtin_text, read_text, tokenize
from evalsuite.errors import EvalInputError


def test_directory_is_files_in_name_order_joined(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.json").write_text("{}")
    assert read_text(tmp_path) == "first\n\nsecond"


def test_missing_and_empty_text_are_clear_errors(tmp_path):
    with pytest.raises(EvalInputError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(EvalInputError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "no_text").mkdir()
    with pytest.raises(EvalInputError, match="no text files"):
        read_text(tmp_path / "no_text")


def test_builtin_splits_are_disjoint_prose():
    train, held = builtin_text("python-docs", "train"), builtin_text("python-docs", "heldout")
    assert len(train) > 1_000_000 and 20_000 < len(held) < len(train) / 10
    first_held_doc = held.split("\n\n")[0]
    assert first_held_doc not in train
    with pytest.raises(EvalInputError, match="unknown split"):
        builtin_text("python-docs", "test")


def test_tokenize(byte_tokenizer):
    ids = tokenize("hello world " * 20, byte_tokenizer)
    assert ids.dim() == 1 and ids.numel() >= 200 and str(ids.dtype) == "torch.int64"


def test_hf_rows_are_joined_like_the_hf_perplexity_guide(monkeypatch):
    import sys
    import types

    from evalsuite.data import hf_text

    class Rows(dict):
        column_names = ["text"]

    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: calls.append((a, k)) or Rows(text=["a", "", "b"]))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert hf_text("wikitext", "wikitext-2-raw-v1", "test") == "a\n\n\n\nb"
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    with pytest.raises(EvalInputError, match="no column 'body'"):
        hf_text("wikitext", None, "test", column="body")
