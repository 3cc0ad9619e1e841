"""The tied embedding is stored once, and the lookup returns exactly the rows the head multiplies by."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import onnx_quant, passes
from export.tied_embedding import share_tied_embedding, tied_token_gather

TABLE = "transformer.wte.weight"
TABLE_BYTES = 256 * 64 * 4  # the tiny decoder's (V, E) fp32 token table


def _folded(graphs) -> onnx.ModelProto:
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    return graph


def _weight_bytes(graph: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)


def _nbits_head_rows(graph: onnx.ModelProto) -> np.ndarray:
    """The (V, E) matrix a MatMulNBits head multiplies by: the head node alone, run on the identity."""
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    inits = passes.initializers(graph)
    width = int(inits[TABLE].dims[1])
    g = helper.make_graph([head], "head", [helper.make_tensor_value_info(head.input[0], TensorProto.FLOAT,
                                                                         [width, width])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                          [inits[i] for i in head.input[1:] if i in inits])
    model = helper.make_model(g, opset_imports=list(graph.opset_import))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {head.input[0]: np.eye(width, dtype=np.float32)})[0].T  # (I @ W).T = W.T, (V, E)


def _dynamic_int8_head_rows(graph: onnx.ModelProto) -> np.ndarray:
    """(q - zero) * scale of the head quantize_dynamic wrote (found by ORT's names for it), as (V, E)."""
    head = next(n for n in graph.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("/lm_head/"))
    inits = passes.initializers(graph)
    q, zero = (numpy_helper.to_array(inits[head.input[i]]).astype(np.float32) for i in (1, 3))
    scale = numpy_helper.to_array(inits[head.input[1].replace("_quantized", "_scale")])
    return ((q - zero) * scale).T


def _with_table(graph: onnx.ModelProto, rows: np.ndarray) -> onnx.ModelProto:
    """A copy of `graph` whose unshared lookup table holds `rows`: the reference for a shared graph."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    table = passes.initializers(out)[TABLE]
    table.CopyFrom(numpy_helper.from_array(rows.astype(np.float32), TABLE))
    return out


def test_share_tied_embedding_stores_the_table_once_and_keeps_outputs(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    prefill, decode, size = run_decoder(graph), run_decoder(graph, n_tokens=1, past=5), _weight_bytes(graph)
    name = tied_token_gather(graph)
    assert name == "/transformer/wte/Gather"
    assert share_tied_embedding(graph, name) == "token lookup reads the head's weight (one fp table)"
    assert TABLE not in passes.initializers(graph)
    assert size - _weight_bytes(graph) == TABLE_BYTES - 2 * 8  # less two int64 shape constants
    # The same values, read from the head's copy: prefill and a one-token decode step match exactly.
    same_outputs(prefill, run_decoder(graph), atol=0)
    same_outputs(decode, run_decoder(graph, n_tokens=1, past=5), atol=0)


def test_an_untied_head_is_not_detected(graphs):
    graph = _folded(graphs)
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    weight = passes.initializers(graph)[head.input[1]]
    w = numpy_helper.to_array(weight).copy()
    w[0, 0] += 1.0  # one changed value: no longer the embedding's transpose
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    assert tied_token_gather(graph) is None


@pytest.mark.parametrize("bits, symmetric, flat", [(4, True, False), (4, False, False), (8, False, False),
                                                   (4, False, True)])
def test_matmul_nbits_head_is_read_with_gather_block_quantized(graphs, run_decoder, same_outputs,
                                                               bits, symmetric, flat):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantizer = MatMulNBitsQuantizer(graph, bits=bits, block_size=16, is_symmetric=symmetric)  # 4 blocks a row
    with passes.quiet("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    quantized = quantizer.model.model
    if flat:  # the op also takes scales and zero points as 1-D (N * blocks)
        head = next(n for n in quantized.graph.node if n.output[0] == "logits")
        for t in (passes.initializers(quantized)[i] for i in head.input[2:4]):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(-1), t.name))
    reference = _with_table(quantized, _nbits_head_rows(quantized))
    size = _weight_bytes(quantized)
    assert share_tied_embedding(quantized, name) == \
        f"token lookup reads the head's int{bits} blocks (GatherBlockQuantized)"
    assert passes.op_counts(quantized)["GatherBlockQuantized"] == 1 and TABLE not in passes.initializers(quantized)
    assert size - _weight_bytes(quantized) == TABLE_BYTES - 2 * 8
    same_outputs(run_decoder(reference, past=3), run_decoder(quantized, past=3), atol=1e-5)


def test_dynamic_int8_head_is_read_with_dequantize_linear(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantized = onnx_quant.ort_dynamic_int8(graph)
    reference = _with_table(quantized, _dynamic_int8_head_rows(quantized))
    size = _weight_bytes(quantized)
    assert share_tied_embedding(quantized, name) == "token lookup reads the head's int8 weight (DequantizeLinear)"
    assert TABLE not in passes.initializers(quantized)
    assert size - _weight_bytes(quantized) == TABLE_BYTES - 2 * 8
    same_outputs(run_decoder(reference, past=3), run_decoder(quantized, past=3), atol=1e-5)


def test_a_padded_block_head_keeps_both_copies(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantized = onnx_quant.ort_matmul_nbits(graph, bits=4, block_size=128)  # K = 64: one padded block
    before = run_decoder(quantized)
    assert share_tied_embedding(quantized, name) == ""
    assert TABLE in passes.initializers(quantized)
    same_outputs(before, run_decoder(quantized), atol=0)
