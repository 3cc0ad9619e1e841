"""Each graph pass keeps the decoder's outputs (logits and KV cache) within a stated tolerance."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import onnx_quant, passes
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


def assert_same(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def graphs():
    """The tiny decoder exported twice: with torch's constant folding (default) and without it."""
    from compress.models import tiny_model

    model = tiny_model(seed=2)
    return export_decoder(model, opset=18), _unfolded(model)


def _unfolded(model) -> onnx.ModelProto:
    import tempfile

    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory() as tmp:
        onnx_export_from_model(model, tmp, task="text-generation-with-past", do_validation=False,
                               do_constant_folding=False)
        return onnx.load(f"{tmp}/model.onnx")


def test_gemm_to_matmul_keeps_outputs(graphs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    before = run(graph, past=3)
    assert passes.op_counts(graph)["Gemm"] == 8
    assert passes.gemm_to_matmul(graph) == 8
    counts = passes.op_counts(graph)
    assert "Gemm" not in counts and counts["MatMul"] == 8 + 2 * 2 + 1  # projections, attention, head
    names = [n.name for n in graph.graph.node if n.op_type == "MatMul"]
    assert "/transformer/h.0/attn/c_attn/MatMul" in names  # node names still name the torch module
    assert_same(before, run(graph, past=3), atol=1e-5)


def test_gemm_to_matmul_folds_trans_b_alpha_and_beta():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/lin/Gemm", alpha=0.5, beta=2.0, transB=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((4, 3)).astype(np.float32)
    expected = 0.5 * x @ w.T + 2.0 * b
    assert passes.gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    assert {t.name for t in model.graph.initializer} == {"w_kn", "b_beta"}  # old w, b unused: dropped
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], expected, atol=1e-5)


def test_fold_transposes_makes_the_tied_head_a_constant(graphs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[1])
    producers = {o: n for n in graph.graph.node for o in n.output}
    head = next(n for n in graph.graph.node if n.name == "/lm_head/MatMul")
    assert producers[head.input[1]].op_type == "Transpose"  # MatMul(x, Transpose(wte)) before the pass
    before = run(graph)
    assert passes.fold_transposes(graph) >= 1
    head = next(n for n in graph.graph.node if n.name == "/lm_head/MatMul")
    inits = passes.initializers(graph)
    assert head.input[1] in inits and list(inits[head.input[1]].dims) == [64, 256]  # wte^T, (E, V)
    assert "transformer.wte.weight" in inits  # still read by the embedding Gather
    assert_same(before, run(graph), atol=0)


def _folded(graphs) -> onnx.ModelProto:
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    return graph


def _weight_bytes(graph: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)


def test_share_tied_embedding_stores_the_table_once_and_keeps_outputs(graphs):
    graph = _folded(graphs)
    prefill, decode, size = run(graph), run(graph, n_tokens=1, past=5), _weight_bytes(graph)
    name = passes.tied_token_gather(graph)
    assert name == "/transformer/wte/Gather"
    assert passes.share_tied_embedding(graph, name) == "token lookup reads the head's weight (one fp table)"
    assert "transformer.wte.weight" not in passes.initializers(graph)
    assert size - _weight_bytes(graph) == 256 * 64 * 4 - 2 * 8  # the table, less two int64 shape constants
    # The same values, read from the head's copy: prefill and a one-token decode step match exactly.
    assert_same(prefill, run(graph), atol=0)
    assert_same(decode, run(graph, n_tokens=1, past=5), atol=0)


def test_untied_head_keeps_its_own_table(graphs):
    graph = _folded(graphs)
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    weight = passes.initializers(graph)[head.input[1]]
    w = numpy_helper.to_array(weight).copy()
    w[0, 0] += 1.0  # one changed value: no longer the embedding's transpose
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    assert passes.tied_token_gather(graph) is None


def _dequantized_head_table(graph: onnx.ModelProto) -> np.ndarray:
    """(V, E) table of a symmetric int4 MatMulNBits head, unpacked by hand (low nibble first, zero 8)."""
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    inits = passes.initializers(graph)
    blocks = numpy_helper.to_array(inits[head.input[1]])  # (V, nb, block / 2)
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(blocks.shape[0], -1)  # (V, nb)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:2], -1)  # (V, nb, block)
    return ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(blocks.shape[0], -1)


def test_share_tied_embedding_reads_the_heads_int4_blocks(graphs):
    graph = _folded(graphs)
    name = passes.tied_token_gather(graph)
    quantized = onnx_quant.ort_matmul_nbits(graph, bits=4, block_size=32)
    # Reference: the quantized graph whose lookup table holds the head's dequantized int4 values.
    reference = onnx.ModelProto()
    reference.CopyFrom(quantized)
    table = passes.initializers(reference)["transformer.wte.weight"]
    table.CopyFrom(numpy_helper.from_array(_dequantized_head_table(quantized), table.name))
    size = _weight_bytes(quantized)
    assert passes.share_tied_embedding(quantized, name) == "token lookup reads the head's int4 blocks (GatherBlockQuantized)"
    assert passes.op_counts(quantized)["GatherBlockQuantized"] == 1
    assert "transformer.wte.weight" not in passes.initializers(quantized)
    assert size - _weight_bytes(quantized) == 256 * 64 * 4 - 2 * 8
    assert_same(run(reference, past=3), run(quantized, past=3), atol=1e-5)


def test_share_tied_embedding_leaves_a_padded_block_head_alone(graphs):
    graph = _folded(graphs)
    name = passes.tied_token_gather(graph)
    quantized = onnx_quant.ort_matmul_nbits(graph, bits=4, block_size=128)  # K = 64: one padded block
    before = run(quantized)
    assert passes.share_tied_embedding(quantized, name) == ""
    assert "transformer.wte.weight" in passes.initializers(quantized)
    assert_same(before, run(quantized), atol=0)


def test_ort_fusions_fuse_layernorm_and_gelu_and_keep_outputs(graphs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    passes.gemm_to_matmul(graph)
    before = run(graph, past=2)
    fused, stats = passes.ort_fusions(graph, num_heads=4, hidden_size=64)
    assert stats.get("SkipLayerNormalization", 0) == 4 and stats.get("FastGelu", 0) == 2
    assert any(o.domain == passes.MS_DOMAIN for o in fused.opset_import)
    assert_same(before, run(fused, past=2), atol=1e-4)


def test_to_fp16_keeps_fp32_io_and_outputs_close(graphs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    before = run(graph, past=2)
    half = passes.to_fp16(graph)
    assert {i.type.tensor_type.elem_type for i in half.graph.input if i.name.startswith("past")} == {TensorProto.FLOAT}
    weights = [t for t in half.graph.initializer if t.name == "transformer.wte.weight"]
    assert weights and weights[0].data_type == TensorProto.FLOAT16
    after = run(half, past=2)
    # fp16 has ~3 decimal digits; logits of this model are O(1).
    assert_same(before, after, atol=2e-2)
    assert np.abs(before[0] - after[0]).max() > 0  # really computed in half precision


def test_remove_unused_initializers():
    g = helper.make_graph([helper.make_node("Identity", ["a"], ["y"])], "g",
                          [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          [numpy_helper.from_array(np.ones(1, np.float32), "a"),
                           numpy_helper.from_array(np.ones(1, np.float32), "unused")])
    model = helper.make_model(g)
    assert passes.remove_unused_initializers(model) == 1
    assert [t.name for t in model.graph.initializer] == ["a"]
