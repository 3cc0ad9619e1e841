"""The shape of a GPT-2 (what pruning changes and what sizes it), and the shapes of the hub's GPT-2s.

The GPT-2 family's configs are carried here as data so that a plan naming a hub id is checked offline,
before anything downloads: `--dry-run` on `model: gpt2` knows the 768-wide, 12-head model it will get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    """The dimensions of a GPT2LMHeadModel that pruning changes (and those that size it)."""

    n_layer: int
    n_head: int
    head_dim: int
    n_inner: int
    vocab_size: int | None  # None: unknown at plan time (a tokenizer still to be loaded)
    n_positions: int
    tied: bool = True  # lm_head shares the token embedding

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim  # GPT2Config has no separate head_dim

    @classmethod
    def of_config(cls, config: Any) -> "Shape":
        """From a GPT2Config or a config.json dict."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        n_embd, n_head = int(get("n_embd")), int(get("n_head"))
        return cls(n_layer=int(get("n_layer")), n_head=n_head, head_dim=n_embd // n_head,
                   n_inner=int(get("n_inner") or 4 * n_embd), vocab_size=get("vocab_size"),
                   n_positions=int(get("n_positions", 1024)), tied=bool(get("tie_word_embeddings", True)))

    def __str__(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"


# The config.json values of the GPT-2 checkpoints on the Hugging Face hub (n_inner null = 4 * n_embd,
# tied head, 50257-token vocabulary, 1024 positions), by hub id.
_GPT2 = {"vocab_size": 50257, "n_positions": 1024, "n_inner": None, "tie_word_embeddings": True}
HUB_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {**_GPT2, "n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-medium": {**_GPT2, "n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_embd": 1280, "n_head": 20},
    "gpt2-xl": {**_GPT2, "n_layer": 48, "n_embd": 1600, "n_head": 25},
    "distilgpt2": {**_GPT2, "n_layer": 6, "n_embd": 768, "n_head": 12},
}
HUB_ALIASES = {**{f"openai-community/{k}": k for k in HUB_CONFIGS if k != "distilgpt2"},
               "distilbert/distilgpt2": "distilgpt2"}


def hub_shape(hub_id: str) -> Shape | None:
    """The shape of a GPT-2 family hub id (None for an id the package carries no config of)."""
    config = HUB_CONFIGS.get(HUB_ALIASES.get(hub_id, hub_id))
    return None if config is None else Shape.of_config(config)


def source_shape(model: str) -> Shape | None:
    """The shape of a model source: a local directory's config.json, or a carried hub config (None:
    a hub id the package has no config of)."""
    from compress.models import is_local_source  # (models imports torch: only when a source is asked about)

    if is_local_source(model):
        return Shape.of_config(json.loads((Path(model) / "config.json").read_text()))
    return hub_shape(model)
