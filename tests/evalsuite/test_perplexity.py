import math

import pytest
import torch
import torch.nn.functional as F

from evalsuite.errors import EvalInputError
from evalsuite.perplexity import perplexity, windows
from evalsuite.runner import TorchRunner


class UniformRunner:
    """Every next token equally likely: perplexity must be exactly the vocab size."""

    backend, device, vocab_size, max_positions = "test", "cpu", 50, 64

    def forward(self, ids, past=None):
        return torch.zeros(*ids.shape, self.vocab_size), None


def test_uniform_model_has_perplexity_equal_to_vocab():
    ids = torch.randint(0, 50, (300,))
    r = perplexity(UniformRunner(), ids, seq_len=32, stride=16, progress=False)
    assert r.ppl == pytest.approx(50.0, rel=1e-6)
    assert r.tokens_scored == 299  # every token but the first is predicted exactly once


class ConfidentlyWrongRunner(UniformRunner):
    """All mass on token 0 by a margin of 2000 nats: the mean NLL is past exp's range for the others."""

    def forward(self, ids, past=None):
        logits = torch.zeros(*ids.shape, self.vocab_size)
        logits[..., 0] = 2000.0
        return logits, None


def test_a_broken_model_scores_inf_not_an_overflow():
    ids = torch.randint(1, 50, (100,))  # never token 0
    assert perplexity(ConfidentlyWrongRunner(), ids, seq_len=32, progress=False).ppl == math.inf


@pytest.mark.parametrize("n, seq_len, stride", [(100, 32, 32), (100, 32, 8), (33, 32, 32), (10, 32, 5)])
def test_windows_score_each_target_once(n, seq_len, stride):
    scored = []
    for w in windows(n, seq_len, stride):
        assert w.end - w.begin <= seq_len
        assert w.begin < w.first_target <= w.end
        scored += range(w.first_target, w.end)
    if stride == seq_len:
        # non-overlapping windows: the first token of each window has no context and is skipped (HF recipe)
        assert len(scored) == len(set(scored)) and scored[0] == 1
    else:
        assert scored == list(range(1, n))


def _manual_nll(model, ids, seq_len, stride):
    """The Hugging Face perplexity recipe written out token by token."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + seq_len, ids.numel())
        x = ids[begin:end].unsqueeze(0)
        with torch.no_grad():
            logp = F.log_softmax(model(x).logits[0], -1)  # (T, V)
        first = max(prev_end, begin + 1)
        for t in range(first, end):
            nll -= float(logp[t - begin - 1, ids[t]])
            count += 1
        prev_end = end
        if end == ids.numel():
            break
    return nll, count


@pytest.mark.parametrize("stride", [16, 7])
def test_matches_hand_computed_value(tiny, stride):
    ids = torch.randint(0, 256, (90,), generator=torch.Generator().manual_seed(1))
    nll, count = _manual_nll(tiny, ids, 16, stride)
    r = perplexity(TorchRunner(tiny), ids, seq_len=16, stride=stride, batch_size=3, progress=False)
    assert r.tokens_scored == count
    assert r.ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_rejects_bad_settings(tiny):
    ids = torch.arange(10)
    with pytest.raises(EvalInputError, match="stride"):
        perplexity(TorchRunner(tiny), ids, seq_len=8, stride=9, progress=False)
    with pytest.raises(EvalInputError, match="positions"):
        perplexity(TorchRunner(tiny), ids, seq_len=4096, progress=False)
    with pytest.raises(EvalInputError, match="at least 2 tokens"):
        perplexity(TorchRunner(tiny), ids[:1], seq_len=8, progress=False)


def test_the_package_exports_the_function_though_it_loads_lazily():
    import evalsuite.perplexity  # noqa: F401  (the submodule of the same name, loaded first)
    from evalsuite import perplexity as exported

    assert callable(exported) and exported.__module__ == "evalsuite.perplexity"
