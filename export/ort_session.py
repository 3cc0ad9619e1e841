"""ONNX Runtime sessions for the exported graphs (model.onnx, model_decode.onnx): providers, threads,
one-line errors for unloadable files, and what the runners read beside the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

from compress.errors import UserError
from evalsuite.errors import BackendUnavailable


def providers_for(device: str) -> list[str]:
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None, spin_wait: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # Pin intra-op threads like torch does, so torch/ORT comparisons use the same cores.
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    if not spin_wait:
        # Idle threads sleep instead of spinning: two sessions taking turns on the same cores (a
        # speculative target and draft) otherwise spin against each other, which doubled the target's
        # verification calls on 2 cores (docs/speculative.md); a lone session decodes faster spinning.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: shape-inference warnings on contrib ops are noise
    return opts


def make_session(path: Path, device: str = "cpu", threads: int | None = None,
                 spin_wait: bool = True) -> ort.InferenceSession:
    """An InferenceSession; a missing, corrupt or invalid model is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        return ort.InferenceSession(str(path), session_options(threads, spin_wait), providers=providers_for(device))
    except (InvalidProtobuf, InvalidGraph, InvalidArgument, Fail) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise UserError(f"{path}: ONNX Runtime cannot load this model ({first})") from None


def gathered_bytes(path: Path) -> int:
    """Bytes of initializers used only as the table of a Gather (embeddings): a decode step reads one
    row of them, so the roofline leaves them out. Reads the graph without its external weights."""
    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
             for t in graph.initializer}
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in sizes:
                users.setdefault(name, set()).add("table" if node.op_type == "Gather" and i == 0 else "other")
    return sum(sizes[name] for name, kinds in users.items() if kinds == {"table"})


def config_beside(path: Path) -> dict:
    config = path.parent / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}
