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


@torch.inference_mode()
def compare_logits(ref: Runner, test: Runner, ids: torch.Tensor, seq_len: int,
                   n_windows: int) -> tuple[float, float, float, int]:
    """(max |diff| prefill, max |diff| decode, top-1 agreement, windows) on the first windows of ids."""
    wins = [w for w in windows(ids.numel(), seq_len, seq_len) if w.end - w.begin == seq_len][:n_windows]
    if not wins:
        wins = windows(ids.numel(), seq_len, seq_len)[:1]
    batch = torch.stack([ids[w.begin:w.end] for w in wins])  # (B, T)
    a, _ = ref.forward(batch)
    b, _ = test.forward(batch)
    a, b = a.float().cpu(), b.float().cpu()
    prefill = float((a - b).abs().max())
    top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())

    # Decode: half the window as prompt, then feed the rest one token at a time with the cache.
    half = max(1, batch.shape[1] // 2)
    steps = min(8, batch.shape[1] - half)
    decode = 0.0
    _, past_a = ref.forward(batch[:, :half])
    _, past_b = test.forward(batch[:, :half])
    for t in range(half, half + steps):
        la, past_a = ref.forward(batch[:, t:t + 1], past_a)
        lb, past_b = test.forward(batch[:, t:t + 1], past_b)
        decode = max(decode, float((la.float().cpu() - lb.float().cpu()).abs().max()))
    return prefill, decode, top1, len(wins)


def validate(ref: Runner, test: Runner, eval_ids: torch.Tensor, seq_len: int, n_windows: int,
             limits: Limits, reference: str) -> Validation:
    """Measure `test` (the exported graph) against `ref` (the torch model) and check the limits."""
    seq_len = min(seq_len, ref.max_positions, test.max_positions, eval_ids.numel())
    prefill, decode, top1, n = compare_logits(ref, test, eval_ids, seq_len, n_windows)
    p_ref = perplexity(ref, eval_ids, seq_len, progress=False)
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
