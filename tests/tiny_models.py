"""Tiny GPT-2 models built in code for the tests (nothing downloads): imported as tests.tiny_models
(pyproject's pytest `pythonpath` puts the checkout root on sys.path)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def tiny_config(vocab_size: int = 256, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                n_positions: int = 128, n_inner: int | None = None) -> "GPT2Config":
    """A small GPT-2 config for tests and quick experiments (no dropout, so outputs are exact)."""
    return GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      n_positions=n_positions, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)


def tiny_model(seed: int = 0, **config_kwargs) -> "GPT2LMHeadModel":
    """A randomly initialised tiny GPT-2 (see tiny_config), in eval mode."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(**config_kwargs)).eval()

