"""The decoding controls shared by every generator: repetition penalty, temperature, top-k, top-p.

One implementation for the report's samples (evalsuite.samples) and the CLI generator
(export.generate), with Hugging Face's names and meanings, so a sample in a report can be
reproduced with `python -m export.generate ... --sample --top-p P --repetition-penalty R --seed S`.
"""

from __future__ import annotations

from typing import Protocol

import torch


class DecodingKnobs(Protocol):
    """What next_token_logits reads (export.generate.GenerationConfig, evalsuite.samples.SamplingSettings)."""

    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


def next_token_logits(logits: torch.Tensor, seen: torch.Tensor, cfg: DecodingKnobs) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to one row of logits (V,)."""
    logits = logits.float().clone()
    if cfg.repetition_penalty != 1.0 and seen.numel():
        # CTRL's penalty, as in transformers: shrink positive logits, push negative ones further down.
        prev = logits[seen]
        logits[seen] = torch.where(prev > 0, prev / cfg.repetition_penalty, prev * cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits[logits < kth] = -float("inf")
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) >= cfg.top_p  # mass before this token already enough
        logits[order[drop]] = -float("inf")
    return logits


def choose_token(scores: torch.Tensor, do_sample: bool, gen: torch.Generator | None) -> int:
    """The next token from processed scores (V,): drawn with `gen` when sampling, else the argmax."""
    if do_sample:
        return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))
    return int(scores.argmax())
