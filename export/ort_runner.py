"""ONNX Runtime runner for an exported GPT-2 decoder: the evalsuite Runner protocol over model.onnx.

    runner = open_runner(Path("runs/x/05-export-onnx/model.onnx"), "cpu")
    logits, past = runner.forward(ids)              # prefill: past length 0
    logits, past = runner.forward(next_ids, past)   # decode with the KV cache

`past` is an OrtPast: the present.* arrays of the last call plus the attention mask of the cached
positions, so left-padded batches keep working across decode steps (pass attention_mask for the new
tokens; 0 marks padding). Threads are pinned per session and reported as `threads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.errors import UserError
from export.onnx import LOGITS, PAST_KEY, PRESENT_KEY
from export.ort_session import config_beside, gathered_bytes, make_session

MODEL_FILE = "model.onnx"
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class OrtPast:
    """KV cache between calls: one array per past input, in the session's input order."""

    arrays: list[np.ndarray]  # each (B, n_head, past, head_dim)
    mask: np.ndarray  # (B, past) int64, 0 where a cached position is padding

    @property
    def length(self) -> int:
        return self.mask.shape[1]


class OrtRunner:
    """Runner over a KV-cache decoder graph (inputs as written by export.onnx; see io.json)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 vocab_size: int | None = None, max_positions: int | None = None,
                 spin_wait: bool = True):
        self.path = Path(path)
        self.device = device
        self.session = make_session(self.path, device, threads, spin_wait)
        self.threads = self.session.get_session_options().intra_op_num_threads
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past_names or "input_ids" not in inputs:
            raise UserError(f"{self.path}: not a KV-cache decoder (inputs: {', '.join(inputs)}); export it with "
                            "`export: {format: onnx}` or optimum's task text-generation-with-past")
        self.present_names = [PRESENT_KEY.format(layer=n.split(".")[1], kind=n.split(".")[2])
                              for n in self.past_names]
        self.has_positions = "position_ids" in inputs
        first = inputs[PAST_KEY.format(layer=0, kind="key")]
        self.n_head, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = _NP_DTYPES.get(first.type, np.float32)
        self.gathered_weight_bytes = gathered_bytes(self.path)
        config = config_beside(self.path)
        self.vocab_size = int(vocab_size or config.get("vocab_size") or self.session.get_outputs()[0].shape[-1])
        self.max_positions = int(max_positions or config.get("n_positions") or 1024)

    def without_spin_wait(self) -> "OrtRunner":
        """The same graph in a session whose idle threads sleep, for taking turns with another session
        on the same cores (evalsuite.speculative.turn_taking)."""
        return OrtRunner(self.path, self.device, self.threads, self.vocab_size, self.max_positions,
                         spin_wait=False)

    def empty_past(self, batch: int) -> OrtPast:
        shape = (batch, self.n_head, 0, self.head_dim)  # (B, nh, 0, hs)
        return OrtPast([np.zeros(shape, self.kv_dtype) for _ in self.past_names], np.zeros((batch, 0), np.int64))

    def forward(self, input_ids: torch.Tensor, past: OrtPast | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, OrtPast]:
        ids = input_ids.detach().cpu().numpy().astype(np.int64)  # (B, T)
        B, T = ids.shape
        past = past if past is not None else self.empty_past(B)
        new_mask = np.ones((B, T), np.int64) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        mask = np.concatenate([past.mask, new_mask], axis=1)  # (B, past + T)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.has_positions:
            # Positions count only real tokens, so a left-padded row starts at 0 like an unpadded one.
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
            feed["position_ids"] = np.ascontiguousarray(positions[:, -T:])
        feed.update(zip(self.past_names, past.arrays))
        outputs = self.session.run([LOGITS, *self.present_names], feed)
        logits = torch.from_numpy(outputs[0]).float()  # (B, T, V)
        return logits, OrtPast(outputs[1:], mask)

    def truncate_past(self, past: OrtPast, length: int) -> OrtPast:
        """The cache's first `length` positions (for speculative decoding's rollback)."""
        return OrtPast([np.ascontiguousarray(a[:, :, :length]) for a in past.arrays], past.mask[:, :length].copy())


def open_runner(path: Path, device: str = "cpu", threads: int | None = None):
    """Entry point `gpt2_edge.runners: onnxruntime`: a model.onnx file or a directory holding one.

    On CPU, when the export step wrote the fused decode graph beside it (export.decode_graph), that
    graph's OrtDecodeRunner is returned (unpadded batches; OrtRunner(model.onnx) takes left padding)."""
    from export.decode_graph import DECODE_FILE

    path = Path(path)
    onnx_path = path / MODEL_FILE if path.is_dir() else path
    decode = onnx_path.parent / DECODE_FILE
    if device == "cpu" and (onnx_path.name == MODEL_FILE or onnx_path == decode) and decode.is_file():
        from export.ort_decode_runner import OrtDecodeRunner

        return OrtDecodeRunner(decode, device, threads)
    return OrtRunner(onnx_path, device, threads)
