"""A stronger torch baseline: the same Hugging Face GPT-2 with a preallocated (static) KV cache, and
optionally `torch.compile` of the one-token decode step.

TorchRunner (evalsuite.runner) grows a DynamicCache by concatenation on every token and pays the
model's full Python overhead per call. Here the cache is a transformers StaticCache of `max_len`
positions, allocated once per batch size and written in place at explicit `cache_position`s, so
every decode step has the same shapes: that is what lets `torch.compile` build one graph for all
positions (dynamic=False, no recompile per position) and, on CUDA, replay it as a CUDA graph
(mode="reduce-overhead"). Attention always spans the whole `max_len` buffer (later slots masked),
so `max_len` should be close to the longest sequence measured.

One live sequence per runner: `past` is a small handle (the shared cache, its length and the
sequence it belongs to). A handle from an earlier sequence (before a later `forward(ids, None)`) is
refused rather than read, since its cache has been overwritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import StaticCache

from evalsuite.errors import EvalInputError
from evalsuite.runner import gathered_bytes

CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class StaticPast:
    """A position in the runner's static cache: positions [0, length) hold this sequence."""

    cache: StaticCache
    length: int
    sequence: int  # which forward(ids, None) started it


class TorchStaticRunner:
    """Runner over a GPT2LMHeadModel with a static KV cache; `compile` compiles the decode step."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", max_len: int | None = None,
                 compile: CompileMode | None = None, dtype: torch.dtype | None = None):
        config = model.config
        n_positions = int(getattr(config, "n_positions", 1024))
        if max_len is not None and not 0 < max_len <= n_positions:
            raise EvalInputError(f"static cache: max_len {max_len} must be in 1..{n_positions} (the model's positions)")
        self.model = model.eval().to(device=device, dtype=dtype)
        self.device = str(device)
        self.vocab_size = int(config.vocab_size)
        self.max_positions = max_len or n_positions
        self.gathered_weight_bytes = gathered_bytes(self.model)
        self.compile_mode = compile
        self.compile_s = 0.0  # wall time of the first compiled decode call (the compile), once it ran
        self._cache: StaticCache | None = None
        self._cache_batch = 0  # the batch size the cache was allocated for
        self._sequence = 0
        # dynamic=False: one decode graph for every position (cache_position is a tensor input)
        self._decode = torch.compile(self._step, mode=compile, dynamic=False) if compile else self._step
        self._compiled = False

    def _step(self, input_ids: torch.Tensor, cache_position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=cache, cache_position=cache_position, use_cache=True)
        return out.logits  # (B, T, V)

    def _cache_for(self, batch: int) -> StaticCache:
        """The preallocated cache, reallocated only when the batch size changes."""
        if self._cache is None or self._cache_batch != batch:
            self._cache = StaticCache(config=self.model.config, max_cache_len=self.max_positions)
            self._cache_batch = batch
        return self._cache

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, past: StaticPast | None = None) -> tuple[torch.Tensor, StaticPast]:
        batch, new = input_ids.shape
        if past is None:
            self._sequence += 1
            cache, start = self._cache_for(batch), 0
        else:
            self._check(past)
            cache, start = past.cache, past.length
        if start + new > self.max_positions:
            raise EvalInputError(f"static cache: {start} cached + {new} new positions exceed max_len "
                                 f"{self.max_positions}")
        ids = input_ids.to(self.device)
        position = torch.arange(start, start + new, device=self.device)  # (T,)
        if new == 1 and start > 0:  # a decode step: the compiled graph, if any
            logits = self._timed_decode(ids, position, cache)
        else:  # prefill (and scoring several positions) stays eager: compiling it buys little
            logits = self._step(ids, position, cache)
        if self.compile_mode == "reduce-overhead":
            logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        return logits.float(), StaticPast(cache, start + new, self._sequence)

    def _timed_decode(self, ids: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # each decode step is a new graph replay
        if not self.compile_mode or self._compiled:
            return self._decode(ids, position, cache)
        t0 = time.perf_counter()  # the first call compiles: its time is the compile cost
        logits = self._decode(ids, position, cache)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        self.compile_s = time.perf_counter() - t0
        self._compiled = True
        return logits

    def _check(self, past: StaticPast) -> None:
        if not isinstance(past, StaticPast):
            raise EvalInputError(f"static cache: past must come from this runner's forward, got {type(past).__name__}")
        if past.sequence != self._sequence or past.cache is not self._cache:
            raise EvalInputError("static cache: this past belongs to an earlier sequence, whose cache has been "
                                 "overwritten since; start again with past=None")

    def truncate_past(self, past: StaticPast, length: int) -> StaticPast:
        """Keep the first `length` positions: later slots are masked until overwritten."""
        self._check(past)
        return StaticPast(past.cache, min(length, past.length), past.sequence)
