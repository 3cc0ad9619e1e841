"""Samples over the Runner protocol: the greedy KV-cache loop equals a plain argmax loop; the sampled
one is reproducible from its seed and draws what `python -m export.generate --sample` draws."""

from __future__ import annotations

import torch

from evalsuite.runner import TorchRunner
from evalsuite.samples import SamplingSettings, decode, generate_samples, greedy
from tests.tiny_models import tiny_model


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
    assert out[0]["greedy"] == byte_tokenizer.decode(expected, skip_special_tokens=True)
    assert out[0]["text"] == byte_tokenizer.decode(
        decode(TorchRunner(model), ids, 6, byte_tokenizer.eos_token_id, SamplingSettings()), skip_special_tokens=True)
    only_greedy = generate_samples(TorchRunner(model), byte_tokenizer, ["A"], new_tokens=6, sampling=None)
    assert only_greedy[0]["text"] == only_greedy[0]["greedy"] == out[1]["greedy"]


def test_sampled_decode_is_reproducible_and_draws_as_export_generate_does():
    from export.generate import GenerationConfig, generate

    model = tiny_model(seed=3)
    runner, prompt = TorchRunner(model), [5, 17, 99, 3]
    settings = SamplingSettings(temperature=1.5, top_p=0.95, repetition_penalty=1.3, seed=7)
    first = decode(runner, prompt, 16, sampling=settings)
    assert decode(runner, prompt, 16, sampling=settings) == first  # the same seed, the same text
    others = [decode(runner, prompt, 16, sampling=SamplingSettings(temperature=1.5, seed=s)) for s in range(3)]
    assert any(o != first for o in others) and first != greedy(runner, prompt, 16)  # it does sample
    cli = generate(runner, prompt, GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.95,
                                                    repetition_penalty=1.3, seed=7, stop_at_eos=False))
    assert cli == first
