"""TorchStaticRunner (static KV cache, optional torch.compile) against TorchRunner (DynamicCache) on the
same weights: same logits, same greedy tokens, same perplexity, and misuse of a stale cache refused."""

import math

import pytest
import torch

from evalsuite.errors import EvalInputError
from evalsuite.latency import measure_latency
from evalsuite.perplexity import perplexity
from evalsuite.runner import Runner, TorchRunner
from evalsuite.torch_static import TorchStaticRunner
from tests.tiny_models import tiny_model

TOL = 1e-5


@pytest.fixture
def model():
    return tiny_model(seed=0, vocab_size=300)


def greedy_side_by_side(eager, static, prompt: torch.Tensor, steps: int) -> tuple[float, int]:
    """Prefill then `steps` greedy tokens through both runners; returns (worst |logit diff|, steps)."""
    a, past_a = eager.forward(prompt)
    b, past_b = static.forward(prompt)
    worst = (a - b).abs().max().item()
    next_a, next_b = a[:, -1:].argmax(-1), b[:, -1:].argmax(-1)  # (B, 1)
    for _ in range(steps):
        assert torch.equal(next_a, next_b)
        a, past_a = eager.forward(next_a, past_a)
        b, past_b = static.forward(next_b, past_b)
        assert a.shape == b.shape
        worst = max(worst, (a - b).abs().max().item())
        next_a, next_b = a[:, -1:].argmax(-1), b[:, -1:].argmax(-1)
    assert torch.equal(next_a, next_b)
    return worst, past_b.length


@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_and_20_greedy_steps_match_the_dynamic_cache(model, batch):
    prompt = torch.randint(0, 300, (batch, 16), generator=torch.Generator().manual_seed(1))
    static = TorchStaticRunner(model, max_len=64)
    assert isinstance(static, Runner)
    worst, length = greedy_side_by_side(TorchRunner(model), static, prompt, steps=20)
    assert worst < TOL and length == 36


def test_a_new_sequence_reuses_the_cache_and_a_stale_past_is_refused(model):
    static, eager = TorchStaticRunner(model, max_len=64), TorchRunner(model)
    first = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(2))
    _, old = static.forward(first)
    cache = old.cache
    # a shorter second sequence: slots 12..29 still hold the first one's keys and must stay masked
    second = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(3))
    worst, _ = greedy_side_by_side(eager, static, second, steps=5)
    assert worst < TOL
    assert static._cache is cache  # same batch size: no reallocation
    with pytest.raises(EvalInputError, match="earlier sequence"):
        static.forward(first[:, :1], old)


def test_truncate_past_then_continue_matches(model):
    static, eager = TorchStaticRunner(model, max_len=64), TorchRunner(model)
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(4))
    _, past_b = static.forward(ids[:, :10])
    _, past_a = eager.forward(ids[:, :10])
    _, past_b = static.forward(ids[:, 10:15], past_b)  # score 5 drafted positions, keep 2 of them
    _, past_a = eager.forward(ids[:, 10:15], past_a)
    past_b, past_a = static.truncate_past(past_b, 12), eager.truncate_past(past_a, 12)
    b, _ = static.forward(ids[:, 15:20], past_b)
    a, _ = eager.forward(ids[:, 15:20], past_a)
    assert past_b.length == 12 and (a - b).abs().max().item() < TOL


def test_perplexity_and_latency_harnesses_apply(model):
    ids = torch.randint(0, 300, (400,), generator=torch.Generator().manual_seed(5))
    eager = perplexity(TorchRunner(model), ids, seq_len=64, batch_size=4, progress=False)
    static = perplexity(TorchStaticRunner(model, max_len=64), ids, seq_len=64, batch_size=4, progress=False)
    assert static.tokens_scored == eager.tokens_scored and math.isclose(static.ppl, eager.ppl, rel_tol=1e-5)
    r = measure_latency(TorchStaticRunner(model, max_len=16), prompt=8, new_tokens=4, repeats=1, warmup=1,
                        progress=False)
    assert r.new_tokens == 4 and math.isfinite(r.decode_ms_per_token["p50"])


def test_lengths_beyond_the_cache_are_refused(model):
    with pytest.raises(EvalInputError, match="max_len 500 must be in 1..128"):
        TorchStaticRunner(model, max_len=500)
    static = TorchStaticRunner(model, max_len=16)
    _, past = static.forward(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(EvalInputError, match="exceed max_len 16"):
        static.forward(torch.zeros(1, 1, dtype=torch.long), past)
    with pytest.raises(EvalInputError, match="latency: prompt 12 \\+ new_tokens 8 exceeds"):
        measure_latency(static, prompt=12, new_tokens=8, progress=False)


@pytest.mark.slow  # inductor's C++ compile of even the tiny model takes ~1 min on 2 shared cores
def test_compiled_decode_matches_without_recompiling(model):
    torch._dynamo.reset()
    prompt = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(6))
    static = TorchStaticRunner(model, max_len=64, compile="default")
    with torch._dynamo.config.patch(error_on_recompile=True):  # one graph for every position
        worst, _ = greedy_side_by_side(TorchRunner(model), static, prompt, steps=20)
    assert worst < TOL and static.compile_s > 0
