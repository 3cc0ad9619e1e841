"""Latency with a KV cache: prefill of a prompt, then per-token greedy decode steps.

Warm-up runs are discarded; p10/p50/p90 are taken over `repeats` runs. Threads are pinned for the
measurement and reported, and so are the cores other processes used meanwhile
(evalsuite.machine_load) and, when the runs spread or the machine was busy, why the number is not to
be trusted: CPU numbers mean little without them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from evalsuite.errors import EvalInputError
from evalsuite.machine_load import OtherLoad, reliability
from evalsuite.runner import Runner
from evalsuite.size import PeakMemory


@dataclass(frozen=True)
class LatencyResult:
    batch: int
    prompt: int
    new_tokens: int
    repeats: int
    threads: int
    prefill_ms: dict[str, float]  # p10, p50, p90
    decode_ms_per_token: dict[str, float]  # p10, p50, p90 of each run's mean decode step
    tokens_per_s: float  # batch * 1000 / decode_ms_per_token p50
    peak_mem_bytes: int
    other_cores: float | None  # cores other processes kept busy while it ran (None: unknown)
    unreliable: str | None  # why the timing is not to be trusted, or None

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
        with OtherLoad() as load:
            for _ in tqdm(range(repeats), desc="latency", leave=False, disable=not progress):
                p, steps = _one_run(runner, ids, new_tokens)
                prefill.append(p)
                decode.append(float(np.mean(steps)) if steps else float("nan"))
    pre, dec = percentiles(prefill), percentiles(decode)
    spread = (dec["p90"] - dec["p10"]) / dec["p50"] if repeats >= 3 and dec["p50"] > 0 else None
    return LatencyResult(
        batch=batch, prompt=prompt, new_tokens=new_tokens, repeats=repeats, threads=n_threads,
        prefill_ms=pre, decode_ms_per_token=dec,
        tokens_per_s=batch * 1e3 / dec["p50"] if dec["p50"] > 0 else float("nan"), peak_mem_bytes=mem.peak_bytes,
        other_cores=None if load.cores is None else round(load.cores, 3),
        unreliable=reliability(spread, load.cores))


def percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(values, q)) for q in (10, 50, 90)}
