"""Greedy sample generations over the Runner protocol, so every backend gets them for free.

A perplexity ratio says how much worse a compressed model is; a few greedy continuations of the same
prompts, side by side for every step, show what that looks like. Greedy (argmax) decoding makes them
deterministic, so two runs of the same model print the same text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalsuite.errors import EvalInputError

if TYPE_CHECKING:  # torch is imported by greedy(): the plan reads DEFAULT_PROMPTS without it
    from evalsuite.runner import Runner

# Prose openings that fit both the python-docs quickstart corpus and the novels of ../shared/data.
DEFAULT_PROMPTS = (
    "The function returns",
    "It is important to note that",
    "Once upon a time",
)
DEFAULT_NEW_TOKENS = 32


def greedy(runner: Runner, prompt_ids: list[int], new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Argmax-decode up to `new_tokens` ids after `prompt_ids` with the KV cache; stop at eos."""
    import torch

    if not prompt_ids:
        raise EvalInputError("samples: the prompt tokenizes to zero tokens")
    # Keep within the model's positions: the last part of an over-long prompt, then what fits.
    prompt_ids = prompt_ids[-(runner.max_positions - 1):]
    new_tokens = min(new_tokens, runner.max_positions - len(prompt_ids))
    ids = torch.tensor([prompt_ids], dtype=torch.long)  # (1, T)
    logits, past = runner.forward(ids)  # prefill: (1, T, V)
    out: list[int] = []
    for i in range(new_tokens):
        next_id = int(logits[0, -1].argmax())
        out.append(next_id)
        if next_id == eos_id or i == new_tokens - 1:
            break
        logits, past = runner.forward(torch.tensor([[next_id]], dtype=torch.long), past)  # (1, 1, V)
    return out


def generate_samples(runner: Runner, tokenizer, prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
                     new_tokens: int = DEFAULT_NEW_TOKENS) -> list[dict[str, str]]:
    """[{"prompt", "text"}]: each prompt's greedy continuation (the new text only), decoded."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new = greedy(runner, ids, new_tokens, tokenizer.eos_token_id)
        out.append({"prompt": prompt, "text": tokenizer.decode(new, skip_special_tokens=True)})
    return out
