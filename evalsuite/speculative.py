"""Speculative decoding over any two Runners: a small draft proposes, the target verifies in one call.

    result = speculative_generate(target, draft, prompt_ids, SpeculativeSettings(k=4, max_new_tokens=64))
    result.tokens, result.stats.acceptance_rate, result.stats.tokens_per_target_call

One step (batch 1): the draft proposes k tokens one at a time with its KV cache; the target scores the
pending token and all k proposals in ONE call with its KV cache, giving k+1 next-token rows; the
longest prefix the target agrees with is kept plus one token of the target's own; both caches are
rolled back to the accepted length (`Runner.truncate_past`). A step so yields 1..k+1 tokens for one
target call and k draft calls.

- Greedy: a proposal is accepted when it is the target's argmax, and the target's argmax follows the
  accepted prefix, so the output is token-identical to the target's own greedy decoding for every k.
- Sampling (Leviathan et al. 2023, Chen et al. 2023): proposal d ~ q is accepted with probability
  min(1, p(d) / q(d)); on a rejection the token is drawn from norm(max(0, p - q)); when all k are
  accepted one more is drawn from p. Every emitted token is then distributed exactly as the target's
  p, whatever the draft. p and q are the SAME processing (`warp`: temperature, top-k, top-p,
  repetition penalty over the same seen ids) of the target's and the draft's logits, so the output
  follows the distribution plain sampling of the target would use. Seeded, but the random stream is
  not plain sampling's: equal distributions, not equal samples.
- Adaptive k (optional): k grows by one after a step that accepted all k, shrinks by one after a
  step that accepted fewer than half, within [1, max_k].

The very first new token goes through a speculative step too: both models prefill prompt[:-1], and
the first target call scores the prompt's last token and the k proposals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from evalsuite.errors import EvalInputError
from evalsuite.runner import Runner

# (logits (V,), ids seen so far (N,) long) -> scores (V,): what decoding takes the argmax or softmax of.
Warp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def identity_warp(logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    return logits.float()


@dataclass(frozen=True)
class SpeculativeSettings:
    k: int = 4  # draft tokens proposed per target call (the start value when adaptive)
    max_new_tokens: int = 64
    sample: bool = False
    seed: int = 0
    eos_token_id: int | None = None
    adaptive: bool = False
    max_k: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.k <= 64 or not 1 <= self.max_k <= 64:
            raise EvalInputError(f"speculative: k must be in 0..64 and max_k in 1..64 (got k={self.k}, "
                                 f"max_k={self.max_k})")
        if self.max_new_tokens < 1:
            raise EvalInputError(f"speculative: max_new_tokens must be >= 1 (got {self.max_new_tokens})")


@dataclass
class SpeculativeStats:
    new_tokens: int = 0
    target_calls: int = 0  # verification calls (the prefill not counted)
    draft_calls: int = 0
    proposed: int = 0  # draft tokens the target scored
    accepted: int = 0  # of which it kept
    prefill_s: float = 0.0  # both models' prefill of prompt[:-1]
    decode_s: float = 0.0  # everything after the prefill
    target_call_s: float = 0.0  # of decode_s: in the target's verification calls
    draft_call_s: float = 0.0  # of decode_s: in the draft's calls
    ks: list[int] = field(default_factory=list)  # k of each step (varies when adaptive)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"new_tokens": self.new_tokens, "target_calls": self.target_calls, "draft_calls": self.draft_calls,
                "proposed": self.proposed, "accepted": self.accepted, "acceptance_rate": self.acceptance_rate,
                "tokens_per_target_call": self.tokens_per_target_call, "prefill_s": self.prefill_s,
                "decode_s": self.decode_s, "target_call_s": self.target_call_s, "draft_call_s": self.draft_call_s,
                "mean_k": sum(self.ks) / len(self.ks) if self.ks else 0.0}


@dataclass
class SpeculativeResult:
    tokens: list[int]
    stats: SpeculativeStats


def truncate_past(runner: Runner, past: Any, length: int) -> Any:
    """The runner's KV cache cut back to its first `length` positions."""
    cut = getattr(runner, "truncate_past", None)
    if cut is None:
        raise EvalInputError(f"the {runner.backend} runner cannot roll its KV cache back (no truncate_past), "
                             "so it cannot take part in speculative decoding")
    return cut(past, length)


class _Cached:
    """One model with its KV cache and the number of positions that cache holds."""

    def __init__(self, runner: Runner):
        self.runner, self.past, self.length, self.calls, self.seconds = runner, None, 0, 0, 0.0

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Logits (T, V) for `ids` placed after the cached positions; the cache grows by T."""
        t0 = time.perf_counter()
        logits, self.past = self.runner.forward(torch.tensor([ids], dtype=torch.long), self.past)  # (1, T, V)
        out = logits[0].float().cpu()  # on a GPU this waits for the call to finish
        self.seconds += time.perf_counter() - t0
        self.length += len(ids)
        self.calls += 1
        return out

    def rollback(self, length: int) -> None:
        if length < self.length:
            self.past = truncate_past(self.runner, self.past, length)
            self.length = length


def turn_taking(runner: Runner) -> Runner:
    """The runner to pair with another one: where it can (ONNX Runtime), the same model in a session
    whose idle threads sleep. Target and draft take turns on the same cores, and a spin-waiting
    session holds them while the other one runs: on 2 cores it doubled the target's verification
    calls (docs/speculative.md). Other runners are returned as they are."""
    reopen = getattr(runner, "without_spin_wait", None)
    return reopen() if reopen is not None else runner


def check_pair(target: Runner, draft: Runner) -> None:
    """A draft must speak the target's vocabulary: same ids, same number of logits."""
    if target.vocab_size != draft.vocab_size:
        raise EvalInputError(f"the draft's vocabulary ({draft.vocab_size} tokens) is not the target's "
                             f"({target.vocab_size}): a draft must share the target's tokenizer")
    for role, runner in (("target", target), ("draft", draft)):
        if not hasattr(runner, "truncate_past"):
            raise EvalInputError(f"the {role}'s {runner.backend} runner cannot roll its KV cache back (no "
                                 "truncate_past), so it cannot take part in speculative decoding")


def tokenizer_digest(tokenizer: Any) -> str:
    """Content digest of what a token id means: sha256 of the tokenizer's id -> token string table
    (added and special tokens included). Equal for the same tokenizer saved as tokenizer.json or as
    vocab.json + merges.txt; different for two vocabularies of the same size."""
    import hashlib
    import json

    table = sorted((int(i), str(t)) for t, i in tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(table, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_same_tokenizer(target_tokenizer: Any, draft_tokenizer: Any, draft_label: str = "the draft") -> None:
    """Refuse a draft whose tokenizer differs from the target's: the same vocabulary size is not enough,
    its ids must mean the same text (else the target "accepts" proposals that are different words)."""
    a, b = tokenizer_digest(target_tokenizer), tokenizer_digest(draft_tokenizer)
    if a == b:
        return
    ids_a = {i: t for t, i in target_tokenizer.get_vocab().items()}
    ids_b = {i: t for t, i in draft_tokenizer.get_vocab().items()}
    first = min((i for i in ids_a.keys() | ids_b.keys() if ids_a.get(i) != ids_b.get(i)), default=None)
    example = "" if first is None else \
        f"; e.g. id {first} is {ids_a.get(first)!r} for the target, {ids_b.get(first)!r} for the draft"
    raise EvalInputError(f"{draft_label}: its tokenizer differs from the target's ({len(ids_b)} vs {len(ids_a)} "
                         f"tokens, content digest {b[:12]} vs {a[:12]}{example}): a draft must share the target's "
                         "tokenizer")


@torch.inference_mode()
def speculative_generate(target: Runner, draft: Runner, prompt_ids: list[int], settings: SpeculativeSettings,
                         warp: Warp = identity_warp, on_token: Callable[[int], None] | None = None
                         ) -> SpeculativeResult:
    """New token ids after `prompt_ids` (batch 1), decoded by `target` with proposals from `draft`."""
    check_pair(target, draft)
    if not prompt_ids:
        raise EvalInputError("speculative: the prompt is empty (it tokenized to no ids)")
    if len(prompt_ids) >= target.max_positions:
        raise EvalInputError(f"speculative: the prompt has {len(prompt_ids)} tokens; the target's context is "
                             f"{target.max_positions}")
    gen = torch.Generator().manual_seed(settings.seed)
    t, d = _Cached(target), _Cached(draft)
    stats = SpeculativeStats()
    t0 = time.perf_counter()
    if len(prompt_ids) > 1:  # prefill; the prompt's last token is scored by the first verification
        t.feed(prompt_ids[:-1])
        if len(prompt_ids) - 1 < draft.max_positions:
            d.feed(prompt_ids[:-1])
    stats.prefill_s = time.perf_counter() - t0
    draft_prefill_calls, prefill_s = d.calls, (t.seconds, d.seconds)
    seq, out, k = list(prompt_ids), [], settings.k
    while True:
        # Room: the verification feeds positions len(seq)-1 .. len(seq)-1+k; the draft one fewer.
        k_now = max(0, min(k, settings.max_new_tokens - len(out) - 1, target.max_positions - len(seq),
                           draft.max_positions - len(seq) + 1))
        drafts, q_rows = _propose(d, seq, k_now, settings.sample, warp, gen)
        pending = seq[t.length:]  # the last committed token (all of the prompt when it was 1 token long)
        rows = t.feed(pending + drafts)[len(pending) - 1:]  # (k_now + 1, V): row i follows seq + drafts[:i]
        new = _verify(rows, drafts, q_rows, seq, settings.sample, warp, gen)
        n_acc = len(new) - 1
        stats.ks.append(k_now)
        stats.proposed += k_now
        stats.accepted += n_acc
        stats.target_calls += 1
        for token in new:
            seq.append(token)
            out.append(token)
            if on_token is not None:
                on_token(token)
            done = (len(out) >= settings.max_new_tokens or len(seq) >= target.max_positions
                    or token == settings.eos_token_id)
            if done:
                break
        if done:
            break
        # Caches keep seq[:-1]: the accepted proposals stay, the rejected ones and the target's own
        # token (not fed yet) do not.
        t.rollback(len(seq) - 1)
        d.rollback(len(seq) - 1)
        if settings.adaptive:
            k = _adapt(k, k_now, n_acc, settings.max_k)
    stats.decode_s = time.perf_counter() - t0 - stats.prefill_s
    stats.new_tokens, stats.draft_calls = len(out), d.calls - draft_prefill_calls
    stats.target_call_s, stats.draft_call_s = t.seconds - prefill_s[0], d.seconds - prefill_s[1]
    return SpeculativeResult(out, stats)


def _propose(d: _Cached, seq: list[int], k: int, sample: bool, warp: Warp, gen: torch.Generator
             ) -> tuple[list[int], list[torch.Tensor]]:
    """k draft tokens after seq (and, when sampling, the distribution q each was drawn from)."""
    drafts: list[int] = []
    q_rows: list[torch.Tensor] = []
    if k == 0:
        return drafts, q_rows
    logits = d.feed(seq[d.length:])[-1]  # the committed tokens the draft has not seen (1, or 2 after a full accept)
    for i in range(k):
        scores = warp(logits, torch.tensor(seq + drafts, dtype=torch.long))
        if sample:
            q = torch.softmax(scores, -1)
            drafts.append(int(torch.multinomial(q, 1, generator=gen)))
            q_rows.append(q)
        else:
            drafts.append(int(scores.argmax()))
        if i < k - 1:
            logits = d.feed(drafts[-1:])[-1]
    return drafts, q_rows


def _verify(rows: torch.Tensor, drafts: list[int], q_rows: list[torch.Tensor], seq: list[int], sample: bool,
            warp: Warp, gen: torch.Generator) -> list[int]:
    """The accepted proposals followed by one token of the target's (correction or bonus)."""
    new: list[int] = []
    for i, row in enumerate(rows):  # row i: the target's logits after seq + drafts[:i]
        scores = warp(row, torch.tensor(seq + drafts[:i], dtype=torch.long))
        if not sample:
            new.append(int(scores.argmax()))
            if i == len(drafts) or new[-1] != drafts[i]:
                return new
            continue
        p = torch.softmax(scores, -1)
        if i == len(drafts):  # every proposal accepted: one more from p
            new.append(int(torch.multinomial(p, 1, generator=gen)))
            return new
        token = drafts[i]
        if accept_draft(p, q_rows[i], token, gen):
            new.append(token)
            continue
        new.append(int(torch.multinomial(residual(p, q_rows[i]), 1, generator=gen)))
        return new
    raise AssertionError("unreachable: the last row always returns")


def accept_draft(p: torch.Tensor, q: torch.Tensor, token: int, gen: torch.Generator) -> bool:
    """Accept a proposal drawn from q with probability min(1, p(token) / q(token))."""
    u = float(torch.rand((), generator=gen))
    return u * float(q[token]) < float(p[token])


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): where to draw from after a rejection. A rejection means p(d) < q(d) for
    the proposal, so the mass is positive; the fallback to p only guards against rounding."""
    r = (p - q).clamp_min(0)
    total = float(r.sum())
    return r / total if total > 0 else p


def _adapt(k: int, k_now: int, n_acc: int, max_k: int) -> int:
    if k_now < k:  # capped by room or by the tokens still wanted: the step says nothing about k
        return k
    if n_acc == k_now:
        return min(k + 1, max_k)
    if 2 * n_acc < k_now:
        return max(k - 1, 1)
    return k
