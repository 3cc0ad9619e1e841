"""config.json of a saved GPT-2: what other tools read from it beyond transformers (imports nothing of the package)."""

from __future__ import annotations


def with_n_ctx(config: dict) -> dict:
    """config.json of a GPT-2 with `n_ctx` = n_positions (a new dict; the same one when there is nothing to add)."""
    if config.get("model_type") != "gpt2" or "n_positions" not in config or "n_ctx" in config:
        return config
    return {**config, "n_ctx": config["n_positions"]}
