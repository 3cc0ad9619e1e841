"""Shared fixtures: tiny GPT-2 models built in code (nothing downloads) and the offline data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.models import save_model
from tests.tiny_models import tiny_config, tiny_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tiny models gain nothing from a second thread, and OpenMP threads that spin-wait on a busy
# machine make them 10-25x slower; one thread keeps the suite fast and steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def machine_rates_not_measured(tmp_path_factory, monkeypatch):
    """--dry-run's cost model measures this machine once and caches it in the user's cache dir: in tests
    the cache is a temporary dir and the rates a fixed stand-in (seconds saved per dry run; the
    measurement itself is tested in tests/compress/test_cost.py)."""
    from compress import cost

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(cost, "measure_rates", lambda shape, threads, batch, seq, key="", repeats=2: cost.Rates(
        train_flops=1e9, forward_flops=3e9, measured_on=key))
    monkeypatch.setattr(cost, "busy_reason", lambda: "")  # the stand-in is cached whatever the load


@pytest.fixture
def tiny():
    """A random tiny GPT-2 (2 layers, 64 wide, 4 heads, vocab 256)."""
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
    """A 256+1-token byte-level BPE tokenizer (no merges) saved in a directory."""
    from compress.source_config import TrainTokenizer
    from compress.pretrain import train_tokenizer
    from evalsuite.data import builtin_text

    tok = train_tokenizer(builtin_text("python-docs", "train")[:200_000], TrainTokenizer(vocab_size=260))
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return tok


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, byte_tokenizer):
    """A tiny GPT-2 trained for a few seconds on python-docs text, saved with its tokenizer.

    Returns (model_dir, heldout_ids). Trained models have real structure (uneven importance,
    outlier channels), which pruning, distillation and quantization tests need.
    """
    from compress.source_config import PretrainConfig
    from compress.pretrain import pretrain
    from evalsuite.data import builtin_text, tokenize

    tok = byte_tokenizer
    train_ids = tokenize(builtin_text("python-docs", "train")[:300_000], tok)
    held_ids = tokenize(builtin_text("python-docs", "heldout")[:20_000], tok)
    cfg = PretrainConfig(n_layer=2, n_embd=64, n_head=4, n_positions=128, seq_len=64, batch_size=16,
                         tokens=64 * 16 * 150, lr=3e-3, warmup_steps=10)
    config = tiny_config(vocab_size=len(tok), n_layer=2, n_embd=64, n_head=4, n_positions=128)
    model = pretrain(cfg, config, train_ids, progress=False)
    path = save_model(model, tmp_path_factory.mktemp("trained_tiny"), tok)
    return path, held_ids


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def reference_teacher(shared_data) -> Path:
    path = shared_data / "teachers" / "gpt2-6x384-corpus"
    if not (path / "config.json").exists():
        pytest.skip(f"reference teacher not found at {path}")
    return path



@pytest.fixture(scope="session")
def perturbed():
    """perturbed(model, scale, seed=1): a copy with Gaussian noise of `scale` x each matrix's std, a
    speculative-decoding draft that agrees with `model` often, not always."""
    import copy

    def make(model, scale: float, seed: int = 1):
        out = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in out.parameters():
                if p.dim() > 1:
                    p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
        return out

    return make


@pytest.fixture(scope="session")
def bytes_tokenizer(tmp_path_factory):
    """A byte-level GPT-2 tokenizer written by hand (256 bytes + <|endoftext|>, no merges): made in
    milliseconds, where training one (byte_tokenizer) takes seconds on a busy machine."""
    import json

    from transformers import GPT2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    path = tmp_path_factory.mktemp("bytes_tokenizer")
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())} | {"<|endoftext|>": 256}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return GPT2TokenizerFast(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))


@pytest.fixture(scope="session")
def docs_text(tmp_path_factory):
    """train.txt and eval.txt from the repo's docs/*.md: real text in no time (the builtin python-docs
    text takes seconds to build). Returns the directory."""
    docs = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
    d = tmp_path_factory.mktemp("docs_text")
    (d / "train.txt").write_text("\n".join(f.read_text() for f in docs[1:]))
    (d / "eval.txt").write_text(docs[0].read_text())
    return d


@pytest.fixture(scope="session")
def random_tiny_dir(tmp_path_factory, bytes_tokenizer, docs_text):
    """A random tiny GPT-2 (2 x 64, 128 positions, vocab 257) saved with bytes_tokenizer, and the text
    directory: (model_dir, text_dir). Nothing trains."""
    path = save_model(tiny_model(seed=0, vocab_size=len(bytes_tokenizer)), tmp_path_factory.mktemp("random_tiny"),
                      bytes_tokenizer)
    return path, docs_text


def text_plan(model, steps, train=True, **extra):
    """A plan dict over random_tiny_dir's model and texts (no latency run)."""
    model_dir, texts = model
    return {"name": "t", "model": str(model_dir),
            "data": ({"train": {"path": str(texts / "train.txt")}} if train else {}) | {
                "eval": {"path": str(texts / "eval.txt"), "seq_len": 64, "max_tokens": 300}},
            "eval": {"latency": None}, "steps": steps, **extra}
