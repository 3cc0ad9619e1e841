import torch

from evalsuite.latency import measure_latency
from evalsuite.runner import TorchRunner


class CountingRunner:
    backend, device, vocab_size, max_positions = "test", "cpu", 10, 512

    def __init__(self):
        self.calls = []

    def forward(self, ids, past=None):
        self.calls.append((tuple(ids.shape), past is None))
        return torch.zeros(*ids.shape, self.vocab_size), (past or 0) + ids.shape[1]


def test_prefill_then_one_token_decode_steps_with_cache():
    runner = CountingRunner()
    r = measure_latency(runner, prompt=7, new_tokens=5, repeats=3, warmup=0, batch=2, progress=False)
    assert len(runner.calls) == 3 * (1 + 5)
    assert runner.calls[0] == ((2, 7), True)  # prefill: the whole prompt, no cache
    assert all(shape == (2, 1) and not fresh for shape, fresh in runner.calls[1:6])  # decode: one token, cached
    assert r.prefill_ms["p50"] <= r.prefill_ms["p90"] and r.decode_ms_per_token["p50"] <= r.decode_ms_per_token["p90"]
    assert r.tokens_per_s > 0 and r.batch == 2 and r.repeats == 3


def test_threads_are_pinned_and_restored(tiny):
    before = torch.get_num_threads()
    r = measure_latency(TorchRunner(tiny), prompt=8, new_tokens=4, repeats=2, warmup=1, threads=1, progress=False)
    assert r.threads == 1
    assert torch.get_num_threads() == before
    assert r.peak_mem_bytes > 0
