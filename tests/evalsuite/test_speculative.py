"""Speculative decoding: greedy is token-identical to the target's greedy decoding, sampling follows
the target's distribution (and a wrong accept/reject rule is caught by the same test)."""

import itertools

import pytest
import torch

from evalsuite import speculative
from evalsuite.errors import EvalInputError
from evalsuite.runner import TorchRunner
from evalsuite.samples import greedy
from evalsuite.speculative import SpeculativeSettings, speculative_generate
from tests.tiny_models import tiny_model

PROMPTS = ([7], [5, 17, 99, 3], list(range(40, 61)))


@pytest.fixture(scope="module")
def pair(perturbed):
    target = tiny_model(seed=0, n_positions=64)
    return TorchRunner(target), TorchRunner(perturbed(target, 0.3)), TorchRunner(tiny_model(seed=5, n_positions=64))


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_is_the_targets_greedy_for_every_k(pair, k):
    target, close, unrelated = pair
    proposed = accepted = 0
    for prompt, draft in itertools.product(PROMPTS, (close, unrelated)):
        want = greedy(target, prompt, 20)
        got = speculative_generate(target, draft, prompt, SpeculativeSettings(k=k, max_new_tokens=20))
        assert got.tokens == want, (k, prompt)
        proposed, accepted = proposed + got.stats.proposed, accepted + got.stats.accepted
    assert 0 < accepted < proposed  # both the accept and the reject branch were taken


def test_adaptive_k_and_context_limits_keep_greedy_identity(pair, perturbed):
    target, close, _ = pair
    got = speculative_generate(target, close, PROMPTS[1], SpeculativeSettings(k=3, max_new_tokens=40, adaptive=True))
    assert got.tokens == greedy(target, PROMPTS[1], 40)
    assert len(set(got.stats.ks[:-1])) > 1  # k adapted along the way (the last step is capped by the budget)
    short_draft = TorchRunner(perturbed(tiny_model(seed=0, n_positions=64), 0.3))
    short_draft.max_positions = 30  # a draft with less context than the target: speculation stops there
    for draft, prompt in ((close, list(range(1, 58))), (short_draft, PROMPTS[1]), (short_draft, PROMPTS[2])):
        want = greedy(target, prompt, 40)  # the first runs into the end of the target's 64 positions
        got = speculative_generate(target, draft, prompt, SpeculativeSettings(k=6, max_new_tokens=40, adaptive=True))
        assert got.tokens == want


def test_stops_at_eos_like_the_target(pair):
    target, close, _ = pair
    free = greedy(target, PROMPTS[1], 30)
    eos = free[10]  # a token the target produces: generation must stop at its first occurrence
    got = speculative_generate(target, close, PROMPTS[1], SpeculativeSettings(k=4, max_new_tokens=30, eos_token_id=eos))
    assert got.tokens == greedy(target, PROMPTS[1], 30, eos_id=eos) == free[:free.index(eos) + 1]


def test_draft_equal_to_target_accepts_everything(pair):
    target = pair[0]
    for sample in (False, True):
        got = speculative_generate(target, target, PROMPTS[1], SpeculativeSettings(k=4, max_new_tokens=25, sample=sample))
        assert got.stats.acceptance_rate == 1.0
        assert got.stats.target_calls == 5 and got.stats.tokens_per_target_call == 5.0  # 4 accepted + 1 each call
        assert got.stats.draft_calls == 4 * 5
        assert 0 < got.stats.target_call_s + got.stats.draft_call_s <= got.stats.decode_s


def test_sampling_is_seeded(pair):
    target, close, _ = pair
    cfg = SpeculativeSettings(k=3, max_new_tokens=20, sample=True, seed=3)
    a = speculative_generate(target, close, PROMPTS[1], cfg).tokens
    assert a == speculative_generate(target, close, PROMPTS[1], cfg).tokens
    assert a != speculative_generate(target, close, PROMPTS[1], SpeculativeSettings(**{**cfg.__dict__, "seed": 4})).tokens


def test_refuses_a_draft_with_another_vocabulary_or_no_rollback(pair):
    target = pair[0]
    other = TorchRunner(tiny_model(seed=1, vocab_size=100))
    with pytest.raises(EvalInputError, match="vocabulary"):
        speculative_generate(target, other, [1, 2], SpeculativeSettings())

    class NoRollback:
        backend, device, vocab_size, max_positions = "fake", "cpu", target.vocab_size, 64

        def forward(self, ids, past=None):
            return target.forward(ids, past)

    with pytest.raises(EvalInputError, match="roll its KV cache back"):
        speculative_generate(target, NoRollback(), [1, 2], SpeculativeSettings())
    with pytest.raises(EvalInputError, match="k must be"):
        SpeculativeSettings(k=-1)


# -- the sampling rule, on a model whose distributions are known exactly --------------------------------

class TrigramRunner:
    """A Runner whose next-token logits are table[previous token, current token]: its cache (the ids
    seen) matters, so a wrong rollback changes the distribution too."""

    backend, device, max_positions = "table", "cpu", 64

    def __init__(self, table: torch.Tensor):
        self.table, self.vocab_size = table, table.shape[-1]  # (V, V, V)

    def forward(self, ids, past=None):
        seen = (past or ()) + tuple(ids[0].tolist())
        start = len(past or ())
        prev = [seen[i - 1] if i else 0 for i in range(start, len(seen))]
        logits = self.table[torch.tensor(prev), ids[0]]  # (T, V)
        return logits.unsqueeze(0), seen

    def truncate_past(self, past, length):
        return past[:length]

    def probs(self, prev: int, cur: int) -> torch.Tensor:
        return torch.softmax(self.table[prev, cur], -1)


V, N_TOKENS, TRIALS = 3, 3, 1200
PROMPT = [1, 2]


@pytest.fixture(scope="module")
def tables():
    gen = torch.Generator().manual_seed(0)
    return (TrigramRunner(2.0 * torch.randn(V, V, V, generator=gen)),
            TrigramRunner(2.0 * torch.randn(V, V, V, generator=gen)))


def exact_joint(runner: TrigramRunner) -> torch.Tensor:
    """P(first N_TOKENS new tokens) under plain sampling of `runner`, flattened over V**N_TOKENS."""
    out = torch.zeros(V ** N_TOKENS)
    for i, seq in enumerate(itertools.product(range(V), repeat=N_TOKENS)):
        ctx, p = list(PROMPT), 1.0
        for tok in seq:
            p *= float(runner.probs(ctx[-2], ctx[-1])[tok])
            ctx.append(tok)
        out[i] = p
    return out


def chi_square_vs(target: TrigramRunner, draft: TrigramRunner, k: int) -> tuple[float, float]:
    """Pearson's statistic of the speculative samples against the target's exact joint distribution
    (cells expected fewer than 5 times pooled into one), and its 0.999 critical value."""
    counts = torch.zeros(V ** N_TOKENS)
    for seed in range(TRIALS):
        got = speculative_generate(target, draft, PROMPT,
                                   SpeculativeSettings(k=k, max_new_tokens=N_TOKENS, sample=True, seed=seed)).tokens
        counts[sum(t * V ** (N_TOKENS - 1 - j) for j, t in enumerate(got))] += 1
    expected = exact_joint(target) * TRIALS
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    return float(((obs - exp) ** 2 / exp).sum()), chi2_critical_999(len(exp) - 1)


def chi2_critical_999(df: int) -> float:
    """The 0.999 quantile of chi-square(df), by Wilson-Hilferty (scipy is no dependency): within 1.2%
    of the exact value for df >= 5 (df 20: 45.44 against scipy's 45.31)."""
    z = 3.0902  # the standard normal's 0.999 quantile
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_sampling_follows_the_targets_distribution(tables):
    target, draft = tables
    tv = 0.5 * float((exact_joint(target) - exact_joint(draft)).abs().sum())
    assert tv > 0.3  # the draft is far from the target, so a rule that trusts it shows
    stat, critical = chi_square_vs(target, draft, k=2)
    assert stat < critical


@pytest.mark.parametrize("wrong", ["always accept", "resample from p"])
def test_a_wrong_rule_fails_the_same_test(tables, monkeypatch, wrong):
    target, draft = tables
    if wrong == "always accept":
        monkeypatch.setattr(speculative, "accept_draft", lambda p, q, token, gen: True)
    else:
        monkeypatch.setattr(speculative, "residual", lambda p, q: p)
    stat, critical = chi_square_vs(target, draft, k=2)
    assert stat > critical
