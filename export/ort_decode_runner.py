"""Runner over the fused decode graph (export.decode_graph): IO binding, preallocated KV buffers.

    runner = OrtDecodeRunner(Path("runs/x/05-export-onnx/model_decode.onnx"))
    logits, past = runner.forward(ids)                 # prefill: (B, T, V)
    logits, past = runner.forward_last(ids)            # prefill for generation: (B, 1, V), last position only
    logits, past = runner.forward(next_ids, past)      # decode: ORT writes the new keys into past's buffers
    past = runner.truncate_past(past, length)          # speculative rollback: only the length changes

`past` is a DecodePast: per layer one key and one value buffer (B, n_head, capacity, head_dim), numpy
arrays wrapped (not copied) as OrtValues and bound as both the past input and the present output, so
a step copies nothing of the cache. The capacity grows (one copy of the filled part) only when a call
would run past it. Like a transformers DynamicCache, a call extends the `past` it is given (an
older handle sees the new positions). Rows must be unpadded: GroupQueryAttention takes no padding mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from compress.errors import UserError
from export.decode_graph import PAST, PRESENT
from export.onnx import LOGITS
from export.ort_session import config_beside, gathered_bytes, make_session

SLACK = 64  # positions allocated beyond a prefill, so that decode steps rarely regrow the buffers


@dataclass
class DecodePast:
    """The KV cache: buffers[2 * layer + (0 key | 1 value)] (B, n_head, capacity, head_dim), `length` filled."""

    buffers: list[np.ndarray]
    values: list[ort.OrtValue]  # the same memory, as ORT sees it
    binding: ort.IOBinding  # past_* and present_* bound to `values` once; each call rebinds the rest
    length: int

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[2]


class OrtDecodeRunner:
    """The evalsuite Runner protocol over model_decode.onnx (unpadded batches only)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 vocab_size: int | None = None, max_positions: int | None = None, slack: int = SLACK,
                 spin_wait: bool = True):
        if device != "cpu":
            raise UserError(f"{path}: the fused decode graph runs on ONNX Runtime's CPU provider; use model.onnx "
                            f"(OrtRunner) on {device}")
        self.path = Path(path)
        self.device = device
        self.session = make_session(self.path, device, threads, spin_wait)
        self.threads = self.session.get_session_options().intra_op_num_threads
        inputs = {i.name: i for i in self.session.get_inputs()}
        first = inputs.get(PAST.format(kind="key", layer=0))
        if first is None or "seqlens_k" not in inputs:
            raise UserError(f"{self.path}: not a decode graph of export.decode_graph (inputs: {', '.join(inputs)})")
        self.n_layer = sum(1 for n in inputs if n.startswith("past_key."))
        self.n_head, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.gathered_weight_bytes = gathered_bytes(self.path)
        config = config_beside(self.path)
        self.vocab_size = int(vocab_size or config.get("vocab_size") or self.session.get_outputs()[0].shape[-1])
        self.max_positions = int(max_positions or config.get("n_positions") or 1024)
        self.slack = slack

    # -- the cache ---------------------------------------------------------------------------------

    def without_spin_wait(self) -> "OrtDecodeRunner":
        """The same graph in a session whose idle threads sleep, for taking turns with another session
        on the same cores (evalsuite.speculative.turn_taking)."""
        return OrtDecodeRunner(self.path, self.device, self.threads, self.vocab_size, self.max_positions, self.slack,
                               spin_wait=False)

    def empty_past(self, batch: int, capacity: int) -> DecodePast:
        shape = (batch, self.n_head, capacity, self.head_dim)  # (B, nh, capacity, hs)
        buffers = [np.empty(shape, np.float32) for _ in range(2 * self.n_layer)]  # never read past `length`
        values = [ort.OrtValue.ortvalue_from_numpy(b) for b in buffers]
        binding = self.session.io_binding()
        for layer in range(self.n_layer):
            for k, kind in enumerate(("key", "value")):
                binding.bind_ortvalue_input(PAST.format(kind=kind, layer=layer), values[2 * layer + k])
                binding.bind_ortvalue_output(PRESENT.format(kind=kind, layer=layer), values[2 * layer + k])  # in place
        return DecodePast(buffers, values, binding, 0)

    def _room_for(self, past: DecodePast | None, batch: int, new: int) -> DecodePast:
        """`past` if `new` more positions fit, else a larger cache holding its filled part."""
        length = past.length if past is not None else 0
        if length + new > self.max_positions:
            raise UserError(f"{self.path.name}: {length} cached + {new} new positions exceed the model's "
                            f"{self.max_positions}")
        if past is not None and length + new <= past.capacity:
            return past
        capacity = min(self.max_positions, max(2 * (length + new), length + new + self.slack))
        grown = self.empty_past(batch, capacity)
        if past is not None:
            for old, buf in zip(past.buffers, grown.buffers):
                buf[:, :, :length] = old[:, :, :length]
            grown.length = length
        return grown

    def truncate_past(self, past: DecodePast, length: int) -> DecodePast:
        """Keep the first `length` positions (speculative rollback); the buffers stay, later writes overwrite."""
        if not 0 <= length <= past.length:
            raise ValueError(f"truncate_past: length {length} outside 0..{past.length}")
        past.length = length
        return past

    # -- calls -------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, past: DecodePast | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, DecodePast]:
        """Logits (B, T, V) of every new position."""
        return self._run(input_ids, past, attention_mask, keep=0)

    def forward_last(self, input_ids: torch.Tensor, past: DecodePast | None = None) -> tuple[torch.Tensor, DecodePast]:
        """Logits (B, 1, V) of the last new position only: what generation needs after a prefill."""
        return self._run(input_ids, past, None, keep=1)

    def _run(self, input_ids: torch.Tensor, past: DecodePast | None, attention_mask: torch.Tensor | None,
             keep: int) -> tuple[torch.Tensor, DecodePast]:
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise UserError(f"{self.path.name}: the fused decode graph takes no padding; run left-padded batches "
                            "on model.onnx (export.ort_runner.OrtRunner)")
        ids = np.ascontiguousarray(input_ids.detach().cpu().numpy(), dtype=np.int64)  # (B, T)
        B, T = ids.shape
        if past is not None and past.buffers[0].shape[0] != B:
            raise ValueError(f"batch {B} does not match the cache's {past.buffers[0].shape[0]}")
        past = self._room_for(past, B, T)
        if B > 1 and T > 1 and past.length > 0:
            # GroupQueryAttention on CPU scores several new positions after a cache for batch 1 only:
            # larger batches go one position at a time (exact, just slower; batch-1 speculation is not)
            steps = [self._run(input_ids[:, t:t + 1], past, None, 1)[0] for t in range(T)]
            return torch.cat(steps[-keep:] if keep else steps, dim=1), past
        total = past.length + T
        logits = np.empty((B, keep or T, self.vocab_size), np.float32)  # fresh: earlier logits stay valid
        io = past.binding
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("position_ids", np.broadcast_to(np.arange(past.length, total, dtype=np.int64), (B, T)).copy())
        io.bind_cpu_input("seqlens_k", np.full(B, total - 1, np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        io.bind_cpu_input("logits_to_keep", np.array([keep], np.int64))
        io.bind_ortvalue_output(LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(io)
        past.length = total
        return torch.from_numpy(logits), past
