"""Latency with a KV cache: prefill of a prompt, then per-token greedy decode steps.

Warm-up runs are discarded; p50/p90 are taken over `repeats` runs. Threads are pinned for the
measurement and reported, since CPU numbers mean little without them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from evalsuite.errors import EvalInputError
from evalsuite.runner import Runner
from evalsuite.size import PeakMemory


@dataclass(frozen=True)
class LatencyResult:
    batch: int
    prompt: int
    new_tokens: int
    repeats: int
    threads: int
    prefill_ms_p50: float
    prefill_ms_p90: float
    decode_ms_per_token_p50: float
    decode_ms_per_token_p90: float
    tokens_per_s: float  # batch * 1000 / decode_ms_per_token_p50
    peak_mem_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def pinned_threads(threads: int | None):
    """Run torch with `threads` intra-op threads inside the block (None: leave as is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _one_run(runner: Runner, prompt: torch.Tensor, new_tokens: int) -> tuple[float, list[float]]:
    """Prefill time (ms) and the time (ms) of each greedy decode step with the KV cache."""
    _sync(runner.device)
    # a runner may score only the last position of the prompt (generation needs no more)
    prefill = getattr(runner, "forward_last", runner.forward)
    t0 = time.perf_counter()
    logits, past = prefill(prompt)
    next_ids = logits[:, -1, :].argmax(-1, keepdim=True)  # (B, 1)
    _sync(runner.device)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    steps = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        logits, past = runner.forward(next_ids, past)
        next_ids = logits[:, -1, :].argmax(-1, keepdim=True)
        _sync(runner.device)
        steps.append((time.perf_counter() - t0) * 1e3)
    return prefill_ms, steps


def measure_latency(runner: Runner, prompt: int = 128, new_tokens: int = 64, repeats: int = 10,
                    warmup: int = 2, batch: int = 1, threads: int | None = None, seed: int = 0,
                    progress: bool = True) -> LatencyResult:
    """Prefill and per-token decode latency of `runner` on random prompt ids."""
    if prompt + new_tokens > runner.max_positions:
        raise EvalInputError(f"latency: prompt {prompt} + new_tokens {new_tokens} exceeds the "
                             f"model's {runner.max_positions} positions")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, runner.vocab_size, (batch, prompt), generator=gen)
    prefill, decode = [], []
    with pinned_threads(threads) as n_threads, PeakMemory(runner.device) as mem:
        for _ in range(warmup):
            _one_run(runner, ids, min(new_tokens, 4))
        for _ in tqdm(range(repeats), desc="latency", leave=False, disable=not progress):
            p, steps = _one_run(runner, ids, new_tokens)
            prefill.append(p)
            decode.append(float(np.mean(steps)) if steps else float("nan"))
    d50 = float(np.percentile(decode, 50))
    return LatencyResult(
        batch=batch, prompt=prompt, new_tokens=new_tokens, repeats=repeats, threads=n_threads,
        prefill_ms_p50=float(np.percentile(prefill, 50)), prefill_ms_p90=float(np.percentile(prefill, 90)),
        decode_ms_per_token_p50=d50, decode_ms_per_token_p90=float(np.percentile(decode, 90)),
        tokens_per_s=batch * 1e3 / d50 if d50 > 0 else float("nan"), peak_mem_bytes=mem.peak_bytes)
