"""Each graph pass keeps the decoder's outputs (logits and KV cache) within a stated tolerance."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export import passes


def test_gemm_to_matmul_keeps_outputs(graphs, run_decoder, same_outputs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    before = run_decoder(graph, past=3)
    assert passes.op_counts(graph)["Gemm"] == 8
    assert passes.gemm_to_matmul(graph) == 8
    counts = passes.op_counts(graph)
    assert "Gemm" not in counts and counts["MatMul"] == 8 + 2 * 2 + 1  # projections, attention, head
    names = [n.name for n in graph.graph.node if n.op_type == "MatMul"]
    assert "/transformer/h.0/attn/c_attn/MatMul" in names  # node names still name the torch module
    same_outputs(before, run_decoder(graph, past=3), atol=1e-5)


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


def test_fold_transposes_makes_the_tied_head_a_constant(graphs, run_decoder, same_outputs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[1])
    producers = {o: n for n in graph.graph.node for o in n.output}
    head = next(n for n in graph.graph.node if n.name == "/lm_head/MatMul")
    assert producers[head.input[1]].op_type == "Transpose"  # MatMul(x, Transpose(wte)) before the pass
    before = run_decoder(graph)
    assert passes.fold_transposes(graph) >= 1
    head = next(n for n in graph.graph.node if n.name == "/lm_head/MatMul")
    inits = passes.initializers(graph)
    assert head.input[1] in inits and list(inits[head.input[1]].dims) == [64, 256]  # wte^T, (E, V)
    assert "transformer.wte.weight" in inits  # still read by the embedding Gather
    same_outputs(before, run_decoder(graph), atol=0)


def test_ort_fusions_fuse_layernorm_and_gelu_and_keep_outputs(graphs, run_decoder, same_outputs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    passes.gemm_to_matmul(graph)
    before = run_decoder(graph, past=2)
    fused, stats = passes.ort_fusions(graph, num_heads=4, hidden_size=64)
    assert stats.get("SkipLayerNormalization", 0) == 4 and stats.get("FastGelu", 0) == 2
    assert any(o.domain == passes.MS_DOMAIN for o in fused.opset_import)
    same_outputs(before, run_decoder(fused, past=2), atol=1e-4)


def test_to_fp16_keeps_fp32_io_and_outputs_close(graphs, run_decoder, same_outputs):
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    before = run_decoder(graph, past=2)
    half = passes.to_fp16(graph)
    assert {i.type.tensor_type.elem_type for i in half.graph.input if i.name.startswith("past")} == {TensorProto.FLOAT}
    weights = [t for t in half.graph.initializer if t.name == "transformer.wte.weight"]
    assert weights and weights[0].data_type == TensorProto.FLOAT16
    after = run_decoder(half, past=2)
    # fp16 has ~3 decimal digits; logits of this model are O(1).
    same_outputs(before, after, atol=2e-2)
    assert np.abs(before[0] - after[0]).max() > 0  # really computed in half precision


def test_remove_unused_initializers():
    g = helper.make_graph([helper.make_node("Identity", ["a"], ["y"])], "g",
                          [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          [numpy_helper.from_array(np.ones(1, np.float32), "a"),
                           numpy_helper.from_array(np.ones(1, np.float32), "unused")])
    model = helper.make_model(g)
    assert passes.remove_unused_initializers(model) == 1
    assert [t.name for t in model.graph.initializer] == ["a"]
