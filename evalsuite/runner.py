"""The one protocol every backend implements: logits for these ids, with or without a KV cache."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Runner(Protocol):
    """A model behind some backend (torch, ONNX Runtime, TensorRT).

    `forward(ids, past)` returns (logits [B, T, V] as a float32 CPU-or-device tensor, new_past).
    `past` is whatever the backend uses for its KV cache; None means "no cache yet".
    """

    backend: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0", ...
    vocab_size: int
    max_positions: int
    # Optional: bytes of weight tables that are only looked up (embeddings), for the roofline.
    # gathered_weight_bytes: int
    # Optional, for speculative decoding (evalsuite.speculative): forward() scores any number of new
    # positions after a cache, and
    #   truncate_past(past, length) -> past
    # cuts a cache back to its first `length` positions (it may reuse or modify `past`).
    # Optional, for generation and latency: forward_last(ids, past) -> (logits [B, 1, V], new_past),
    # the logits of the last new position only (a prefill then skips the head on the others).

    def forward(self, input_ids: torch.Tensor, past: Any | None = None) -> tuple[torch.Tensor, Any]:
        ...


class TorchRunner:
    """Runner over any Hugging Face causal LM (GPT2LMHeadModel or a quantized variant of it)."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.device = str(device)
        config = model.config
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(getattr(config, "n_positions", 1024))
        self.gathered_weight_bytes = gathered_bytes(model)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, past: Any | None = None) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=input_ids.to(self.device), past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    def truncate_past(self, past: Any, length: int) -> Any:
        """Cut the cache to `length` positions: a transformers Cache in place, or a legacy tuple."""
        if hasattr(past, "crop"):
            past.crop(length)
            return past
        return tuple(tuple(t[:, :, :length] for t in layer) for layer in past)  # each (B, nh, length, hs)


def gathered_bytes(model: torch.nn.Module) -> int:
    """Bytes of the embedding tables a decode step only looks up: the position embeddings, and the
    token embeddings unless the LM head reads the same matrix: tied weights, or a quantized head whose codes
    also serve the token lookup (the head module says so with `serves_token_table`; the float table in
    memory is rebuilt from those codes, not stored)."""
    tables = []
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if wpe is not None:
        tables.append(wpe.weight)
    wte = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if getattr(head, "weight", None) is not wte and not getattr(head, "serves_token_table", False):
        tables.append(wte)
    return sum(t.numel() * t.element_size() for t in tables)
