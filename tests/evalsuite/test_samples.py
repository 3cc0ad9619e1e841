"""Greedy samples over the Runner protocol: the KV-cache loop equals a plain argmax loop."""

from __future__ import annotations

import torch

from compress.models import tiny_model
from evalsuite.runner import TorchRunner
from evalsuite.samples import generate_samples, greedy


def _argmax_without_cache(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits  # (1, T, V), the whole sequence again
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_equals_manual_argmax_loop():
    model = tiny_model(seed=1)
    prompt = [5, 17, 99, 3]
    assert greedy(TorchRunner(model), prompt, 12) == _argmax_without_cache(model, prompt, 12)


def test_greedy_stops_at_eos_and_at_the_last_position():
    model = tiny_model(seed=1, n_positions=16)
    runner = TorchRunner(model)
    first = greedy(runner, [5, 17], 5)
    assert greedy(runner, [5, 17], 5, eos_id=first[0]) == first[:1]
    long = greedy(runner, list(range(40)), 10)  # prompt longer than 16 positions: its tail is kept
    assert len(long) == 1 and long == _argmax_without_cache(model, list(range(40))[-15:], 1)


def test_generate_samples_decodes_continuations(byte_tokenizer):
    model = tiny_model(seed=2, vocab_size=len(byte_tokenizer))
    out = generate_samples(TorchRunner(model), byte_tokenizer, ["The function", "A"], new_tokens=6)
    assert [s["prompt"] for s in out] == ["The function", "A"]
    ids = byte_tokenizer("The function", add_special_tokens=False)["input_ids"]
    expected = _argmax_without_cache(model, ids, 6)
    if byte_tokenizer.eos_token_id in expected:
        expected = expected[:expected.index(byte_tokenizer.eos_token_id) + 1]
    assert out[0]["text"] == byte_tokenizer.decode(expected, skip_special_tokens=True)
