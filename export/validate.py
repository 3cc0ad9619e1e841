"""Validate an exported graph against the torch model it came from -> validation.json.

Three measurements on the plan's eval text, each through the Runner protocol so torch and ONNX
Runtime see the same ids:
  - max |logit diff| over the first `windows` eval windows (prefill), and over decode steps with the
    KV cache (prefill half a window, then one token at a time);
  - top-1 agreement: share of positions where both pick the same next token;
  - the perplexity ratio of the two on the first `validation.tokens` eval tokens (windows of seq_len,
    stride seq_len): a check only. The perplexity of the artifact is measured once, by the plan
    runner on the whole eval text (metrics.json); validation.json records no absolute perplexity, so
    the two files never show two numbers for one artifact.

The check that decides pass/fail depends on what the graph is:
  exact       fp32 graph of an fp32 model, or of a quantized model with the same integers:
              the logit check (fp32) or the perplexity check (quantized) applies;
  approximate fp16 graph or ONNX Runtime's own quantizer on an fp32 model: only the perplexity
              ratio to the torch model, with its own limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from evalsuite.perplexity import perplexity, windows
from evalsuite.runner import Runner


@dataclass(frozen=True)
class Limits:
    """What must hold for the step to pass (None: not checked)."""

    max_abs_logit: float | None = None
    max_ppl_rel: float | None = None  # |ppl of the export / ppl of torch - 1|


@dataclass
class Validation:
    reference: str  # what the torch side is, e.g. "torch fp32", "torch int4 (QuantLinear)"
    max_abs_logit_diff: float  # prefill, over the compared windows
    decode_max_abs_logit_diff: float  # decode steps with the KV cache
    top1_agreement: float
    ppl_ratio: float  # perplexity of the export / of the torch model, on `ppl_windows`
    ppl_rel_diff: float  # |ppl_ratio - 1|
    ppl_windows: str  # which tokens the ratio is on (a validation prefix, not the step's perplexity)
    seq_len: int
    windows_compared: int
    limits: dict
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ReferenceLogits:
    """The torch model's logits on the compared windows: prefill, and decode steps with its KV cache."""

    batch: torch.Tensor  # (B, T) ids
    prefill: torch.Tensor  # (B, T, vocab)
    half: int  # prompt length of the decode check
    decode: list[torch.Tensor]  # one (B, 1, vocab) per decode step


@torch.inference_mode()
def reference_logits(ref: Runner, ids: torch.Tensor, seq_len: int, n_windows: int) -> ReferenceLogits:
    """The first n_windows full windows of ids (one shorter window if none is full) through `ref`."""
    wins = [w for w in windows(ids.numel(), seq_len, seq_len) if w.end - w.begin == seq_len][:n_windows]
    if not wins:
        wins = windows(ids.numel(), seq_len, seq_len)[:1]
    batch = torch.stack([ids[w.begin:w.end] for w in wins])  # (B, T)
    prefill, _ = ref.forward(batch)
    # Decode: half the window as prompt, then feed the rest one token at a time with the cache.
    half = max(1, batch.shape[1] // 2)
    decode = []
    _, past = ref.forward(batch[:, :half])
    for t in range(half, half + min(8, batch.shape[1] - half)):
        logits, past = ref.forward(batch[:, t:t + 1], past)
        decode.append(logits.float().cpu())
    return ReferenceLogits(batch, prefill.float().cpu(), half, decode)


@torch.inference_mode()
def compare_logits(ref: ReferenceLogits, test: Runner) -> tuple[float, float, float, int]:
    """(max |diff| prefill, max |diff| decode, top-1 agreement, windows) of `test` against the reference."""
    b, _ = test.forward(ref.batch)
    b = b.float().cpu()
    prefill = float((ref.prefill - b).abs().max())
    top1 = float((ref.prefill.argmax(-1) == b.argmax(-1)).float().mean())
    decode = 0.0
    _, past = test.forward(ref.batch[:, :ref.half])
    for i, want in enumerate(ref.decode):
        t = ref.half + i
        got, past = test.forward(ref.batch[:, t:t + 1], past)
        decode = max(decode, float((want - got.float().cpu()).abs().max()))
    return prefill, decode, top1, ref.batch.shape[0]


def validate(ref: Runner, test: Runner, eval_ids: torch.Tensor, seq_len: int, n_windows: int,
             limits: Limits, reference: str, memo: dict | None = None) -> Validation:
    """Measure `test` (the exported graph) against `ref` (the torch model) and check the limits. `memo`:
    a dict shared by the validations of one export (model.onnx, model_decode.onnx), so that the torch
    side is measured once."""
    seq_len = min(seq_len, ref.max_positions, test.max_positions, eval_ids.numel())
    memo = {} if memo is None else memo
    if ("ref", seq_len) not in memo:
        memo["ref", seq_len] = (reference_logits(ref, eval_ids, seq_len, n_windows),
                                perplexity(ref, eval_ids, seq_len, progress=False))
    ref_logits, p_ref = memo["ref", seq_len]
    prefill, decode, top1, n = compare_logits(ref_logits, test)
    p_test = perplexity(test, eval_ids, seq_len, progress=False)
    ratio = p_test.ppl / p_ref.ppl
    rel = abs(ratio - 1)
    on = (f"first {eval_ids.numel():,} eval tokens, windows of {seq_len}, stride {seq_len}, "
          f"{p_test.tokens_scored:,} scored (the step's perplexity is metrics.json's, on the whole eval text)")
    problems = []
    worst = max(prefill, decode)
    if limits.max_abs_logit is not None and not worst <= limits.max_abs_logit:
        problems.append(f"max |logit diff| {worst:.3g} (prefill {prefill:.3g}, decode {decode:.3g}) "
                        f"exceeds {limits.max_abs_logit:g} vs {reference}")
    if limits.max_ppl_rel is not None and not rel <= limits.max_ppl_rel:
        problems.append(f"perplexity on the validation windows, ratio {ratio:.4g} to {reference}: "
                        f"{100 * rel:.2f}% apart, limit {100 * limits.max_ppl_rel:g}%")
    if not math.isfinite(p_test.ppl):
        problems.append(f"perplexity of the export is {p_test.ppl}")
    return Validation(reference=reference, max_abs_logit_diff=prefill, decode_max_abs_logit_diff=decode,
                      top1_agreement=top1, ppl_ratio=ratio, ppl_rel_diff=rel, ppl_windows=on, seq_len=seq_len,
                      windows_compared=n, limits=asdict(limits), problems=problems)
