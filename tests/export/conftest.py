"""Fixtures of the export tests: the tiny decoder exported once, and a way to run a graph."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx import export_decoder


def run(graph: onnx.ModelProto, n_tokens: int = 6, past: int = 0) -> list[np.ndarray]:
    """Logits and presents of one call (batch 2) with a random past of length `past`."""
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 256, (2, n_tokens)).astype(np.int64),
            "attention_mask": np.ones((2, past + n_tokens), np.int64),
            "position_ids": np.tile(np.arange(past, past + n_tokens), (2, 1)).astype(np.int64)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = rng.standard_normal((2, 4, past, 16)).astype(np.float32)
    return sess.run(None, feed)


def unfused_prefill_logits(graph: "onnx.ModelProto | str", ids: np.ndarray) -> np.ndarray:
    """Prefill logits (no past) from ONNX Runtime with graph optimizations off: its fusions of
    DQ + MatMul into quantized kernels round differently; unfused, a DequantizeLinear is exact."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    B, T = ids.shape
    feed = {"input_ids": ids, "attention_mask": np.ones((B, T), np.int64),
            "position_ids": np.tile(np.arange(T), (B, 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((B, i.shape[1], 0, i.shape[3]), np.float32)  # (B, nh, 0, hs)
    return sess.run(["logits"], feed)[0]


def assert_same(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture
def run_decoder():
    """run(graph, n_tokens=6, past=0) -> the outputs of one ORT call on the tiny decoder's inputs."""
    return run


@pytest.fixture
def prefill_logits():
    """prefill_logits(graph_or_path, ids) -> ORT's unfused prefill logits (exact DequantizeLinear)."""
    return unfused_prefill_logits


@pytest.fixture
def same_outputs():
    """same_outputs(a, b, atol): every output of two runs matches within atol."""
    return assert_same


@pytest.fixture(scope="session")
def graphs():
    """The tiny decoder exported twice: with torch's constant folding (default) and without it."""
    from tests.tiny_models import tiny_model

    model = tiny_model(seed=2)
    return export_decoder(model, opset=18), _unfolded(model)


def _unfolded(model) -> onnx.ModelProto:
    import tempfile

    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory() as tmp:
        onnx_export_from_model(model, tmp, task="text-generation-with-past", do_validation=False,
                               do_constant_folding=False)
        return onnx.load(f"{tmp}/model.onnx")
