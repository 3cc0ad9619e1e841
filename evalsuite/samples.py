"""Sample generations over the Runner protocol, so every backend gets them for free.

A perplexity ratio says how much worse a compressed model is; a few continuations of the same
prompts, side by side for every step, show what that looks like. Each prompt is continued twice:

- sampled (top-p, temperature, repetition penalty; evalsuite.sampling) from a fixed seed: what a
  reader sees first, because a small model's greedy text loops ("the↵the default, the↵the default");
  the same model, seed and settings give the same text on every run;
- greedy (argmax, no penalty): the parity check; an export must continue exactly like the step it
  exports, and two runs of the same model print the same text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evalsuite.errors import EvalInputError

if TYPE_CHECKING:  # torch is imported by decode(): the plan reads DEFAULT_PROMPTS without it
    from evalsuite.runner import Runner

# Prose openings that fit both the python-docs quickstart corpus and the novels of ../shared/data.
DEFAULT_PROMPTS = (
    "The function returns",
    "It is important to note that",
    "Once upon a time",
)
DEFAULT_NEW_TOKENS = 32


@dataclass(frozen=True)
class SamplingSettings:
    """How the report's sampled continuations are drawn (export.generate's names and meanings)."""

    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.3
    seed: int = 0
    top_k: int = 0
    do_sample: bool = True  # for evalsuite.sampling.next_token_logits; always sampled here

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "do_sample"}


def decode(runner: Runner, prompt_ids: list[int], new_tokens: int, eos_id: int | None = None,
           sampling: SamplingSettings | None = None) -> list[int]:
    """Up to `new_tokens` ids after `prompt_ids` with the KV cache, stopping at eos: argmax without
    `sampling`, else drawn from a generator seeded with sampling.seed."""
    import torch

    from evalsuite.sampling import choose_token, next_token_logits

    if not prompt_ids:
        raise EvalInputError("samples: the prompt tokenizes to zero tokens")
    # Keep within the model's positions: the last part of an over-long prompt, then what fits.
    prompt_ids = prompt_ids[-(runner.max_positions - 1):]
    new_tokens = min(new_tokens, runner.max_positions - len(prompt_ids))
    gen = torch.Generator().manual_seed(sampling.seed) if sampling else None
    seen = torch.tensor(prompt_ids, dtype=torch.long)  # (T,), grows by one per new token
    logits, past = runner.forward(seen.unsqueeze(0))  # prefill: (1, T, V)
    out: list[int] = []
    for i in range(new_tokens):
        row = logits[0, -1].cpu()  # (V,)
        next_id = int(row.argmax()) if sampling is None else choose_token(
            next_token_logits(row, seen, sampling), True, gen)
        out.append(next_id)
        if next_id == eos_id or i == new_tokens - 1:
            break
        seen = torch.cat([seen, torch.tensor([next_id])])
        logits, past = runner.forward(torch.tensor([[next_id]], dtype=torch.long), past)  # (1, 1, V)
    return out


def greedy(runner: Runner, prompt_ids: list[int], new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Argmax-decode up to `new_tokens` ids after `prompt_ids` with the KV cache; stop at eos."""
    return decode(runner, prompt_ids, new_tokens, eos_id)


def generate_samples(runner: Runner, tokenizer, prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
                     new_tokens: int = DEFAULT_NEW_TOKENS,
                     sampling: SamplingSettings | None = SamplingSettings()) -> list[dict[str, str]]:
    """[{"prompt", "text", "greedy"}]: each prompt's sampled continuation ("text"; greedy again when
    `sampling` is None) and its greedy one, the new text only, decoded."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        greedy_text = tokenizer.decode(decode(runner, ids, new_tokens, eos), skip_special_tokens=True)
        text = greedy_text if sampling is None else tokenizer.decode(
            decode(runner, ids, new_tokens, eos, sampling), skip_special_tokens=True)
        out.append({"prompt": prompt, "text": text, "greedy": greedy_text})
    return out
