"""Strided sliding-window perplexity over one token stream (the Hugging Face perplexity recipe).

Windows of `seq_len` tokens start every `stride` tokens; each window scores only the targets that no
earlier window scored, so every token after the first is predicted exactly once, with up to
`seq_len - stride` tokens of context carried over.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evalsuite.errors import EvalInputError
from evalsuite.runner import Runner


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float  # natural-log loss summed over scored tokens
    tokens_scored: int
    tokens_total: int
    windows: int
    seq_len: int
    stride: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model
    end: int  # one past the last token fed
    first_target: int  # first token position scored in this window


def windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """The windows that cover a stream of n_tokens, each scoring targets not scored before."""
    out, scored_to = [], 1  # token 0 has no context, so it is never a target
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_len, n_tokens)
        if end > scored_to:
            out.append(Window(begin, end, max(scored_to, begin + 1)))
            scored_to = end
        if end == n_tokens:
            break
    return out


def perplexity(runner: Runner, ids: torch.Tensor, seq_len: int = 1024, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 4, progress: bool = True) -> PerplexityResult:
    """exp(mean NLL) of the stream `ids` (1-D) under `runner`, with strided windows."""
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise EvalInputError(f"stride {stride} must be in 1..seq_len ({seq_len})")
    if seq_len > runner.max_positions:
        raise EvalInputError(f"seq_len {seq_len} exceeds the model's {runner.max_positions} positions")
    ids = ids[:max_tokens] if max_tokens else ids
    if ids.numel() < 2:
        raise EvalInputError(f"need at least 2 tokens to measure perplexity, got {ids.numel()}")

    wins = windows(ids.numel(), seq_len, stride)
    nll_sum, scored = 0.0, 0
    bar = tqdm(total=len(wins), desc="perplexity", unit="win", disable=not progress, leave=False)
    i = 0
    while i < len(wins):
        # Batch consecutive windows of equal length and equal scored span; most are alike.
        w0 = wins[i]
        group = [w0]
        while (i + len(group) < len(wins) and len(group) < batch_size
               and (w := wins[i + len(group)]).end - w.begin == w0.end - w0.begin
               and w.end - w.first_target == w0.end - w0.first_target):
            group.append(w)
        batch = torch.stack([ids[w.begin:w.end] for w in group])  # (B, T)
        logits, _ = runner.forward(batch)
        logits = logits.float().cpu()
        start = w0.first_target - w0.begin  # first scored position inside the window
        pred = logits[:, start - 1:-1, :]  # logits at t predict token t+1
        target = batch[:, start:]
        nll = F.cross_entropy(pred.reshape(-1, pred.size(-1)), target.reshape(-1), reduction="sum")
        nll_sum += float(nll)
        scored += target.numel()
        i += len(group)
        bar.update(len(group))
    bar.close()
    mean_nll = nll_sum / scored
    # a broken model's mean NLL can pass ln(float max) ~ 709: its ppl is inf, not an OverflowError
    ppl = math.exp(mean_nll) if mean_nll < 709.0 else math.inf
    return PerplexityResult(ppl=ppl, nll_sum=nll_sum, tokens_scored=scored,
                            tokens_total=int(ids.numel()), windows=len(wins), seq_len=seq_len, stride=stride)
