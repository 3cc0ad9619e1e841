"""Calibration plumbing shared by GPTQ and SmoothQuant: token windows, the inputs of block 0, running
one block at a time, and hooks that see each linear layer's input."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.training import sample_batch

CALIB_BATCH = 8  # windows per forward pass


def calibration_windows(ids: torch.Tensor, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_samples random windows of seq_len tokens from a 1-D token stream -> (N, T)."""
    if ids.dim() == 2:
        return ids[:n_samples, :seq_len]
    if ids.numel() < seq_len + 2:
        raise UserError(f"calibration needs more than {seq_len + 1} tokens of data.train, got {ids.numel()}")
    return sample_batch(ids, n_samples, seq_len, seed=seed, step=0)[:, :seq_len]


@dataclass
class BlockCall:
    """The arguments one GPT-2 block was called with, for one batch of windows."""

    hidden: torch.Tensor  # (B, T, E)
    args: tuple
    kwargs: dict[str, Any]


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (we only wanted its inputs)."""


@torch.no_grad()
def capture_block_inputs(model: GPT2LMHeadModel, windows: torch.Tensor) -> list[BlockCall]:
    """Run the embeddings and record what block 0 receives (hidden states, mask, positions...),
    so blocks can be replayed one at a time with exactly the arguments GPT2Model passes them."""
    calls: list[BlockCall] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        calls.append(BlockCall(hidden, tuple(args[1:]), dict(kwargs)))
        raise _Stop

    device = model.transformer.wte.weight.device
    handle = model.transformer.h[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in windows.split(CALIB_BATCH):
            try:
                model.transformer(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return calls


@torch.no_grad()
def run_block(block: nn.Module, calls: list[BlockCall]) -> list[BlockCall]:
    """Each call's hidden states passed through `block` (the next block's inputs)."""
    out = []
    for c in calls:
        y = block(c.hidden, *c.args, **c.kwargs)
        out.append(BlockCall(y[0] if isinstance(y, tuple) else y, c.args, c.kwargs))
    return out


@contextmanager
def input_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call fn(name, x) with the input x (..., in_features) of each module while inside the block."""
    handles = [m.register_forward_hook(lambda mod, args, out, n=name: fn(n, args[0].detach()))
               for name, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_model(model: GPT2LMHeadModel, windows: torch.Tensor) -> None:
    """Forward every calibration window through the whole model (for hooks to watch)."""
    device = model.transformer.wte.weight.device
    for batch in windows.split(CALIB_BATCH):
        model.transformer(input_ids=batch.to(device), use_cache=False)
