"""Our GGUF in stock llama.cpp (llama-cpp-python, bench/setup_peers.sh): its tokenizer, greedy tokens and
perplexity against the toolkit's own torch model at the same precision. Slow; skipped without llama.cpp."""

import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (bash bench/setup_peers.sh)")

from evalsuite.perplexity import perplexity  # noqa: E402
from evalsuite.runner import TorchRunner  # noqa: E402
from export.generate import GenerationConfig, generate  # noqa: E402
from export.gguf import write_gguf  # noqa: E402
from export.gguf_runner import GgufReadBack, LlamaCppRunner  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student(trained_tiny):
    from compress.models import load_model, load_tokenizer

    model_dir, held = trained_tiny
    return load_model(model_dir), load_tokenizer(model_dir), held


def test_the_embedded_tokenizer_tokenizes_as_transformers(student, tmp_path):
    model, tok, _ = student
    write_gguf(model, {}, tok, tmp_path / "m.gguf", "f32", "f32")
    llm = LlamaCppRunner(tmp_path / "m.gguf").llm
    text = "The os module provides a portable way of using operating system dependent functionality.\n  x = 1"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)


@pytest.mark.parametrize("t", ["f32", "f16"])
def test_greedy_tokens_in_llama_cpp_equal_torch(student, tmp_path, t):
    model, tok, _ = student
    write_gguf(model, {}, tok, tmp_path / "m.gguf", t, t)
    prompt = tok.encode("The os module provides")
    cfg = GenerationConfig(max_new_tokens=32, eos_token_id=tok.eos_token_id)
    ours = generate(TorchRunner(model) if t == "f32" else GgufReadBack(tmp_path / "m.gguf"), prompt, cfg)
    assert generate(LlamaCppRunner(tmp_path / "m.gguf"), prompt, cfg) == ours


@pytest.mark.parametrize("t,limit", [("f32", 1e-3), ("f16", 2e-3), ("q8_0", 5e-3)])
def test_perplexity_in_llama_cpp_matches_the_toolkits_model(student, tmp_path, t, limit):
    """f32/f16: torch fp32; q8_0: the same file read back (dequantized) in torch; the issue's bar for Q8_0
    is 0.5% of the torch model's perplexity."""
    model, tok, held = student
    write_gguf(model, {}, tok, tmp_path / "m.gguf", t, t)
    ids = held[:4096]
    ref = perplexity(TorchRunner(model), ids, 64, progress=False).ppl
    got = perplexity(LlamaCppRunner(tmp_path / "m.gguf"), ids, 64, progress=False).ppl
    assert abs(got / ref - 1) < max(limit, 5e-3 if t == "q8_0" else limit)
    logits, past = LlamaCppRunner(tmp_path / "m.gguf").forward(ids[None, :16])
    ref_logits, _ = TorchRunner(model).forward(ids[None, :16])
    assert float((logits - ref_logits).abs().max()) < (1e-2 if t == "f32" else 0.2)
