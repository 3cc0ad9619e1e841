"""The tied embedding is stored once and the decoder's outputs stay those of the head's weight."""

import numpy as np
import onnx
from onnx import numpy_helper

from export import onnx_quant, passes
from export.tied_embedding import share_tied_embedding, tied_token_gather


def _folded(graphs) -> onnx.ModelProto:
    graph = onnx.ModelProto()
    graph.CopyFrom(graphs[0])
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    return graph


def _weight_bytes(graph: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)


def test_share_tied_embedding_stores_the_table_once_and_keeps_outputs(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    prefill, decode, size = run_decoder(graph), run_decoder(graph, n_tokens=1, past=5), _weight_bytes(graph)
    name = tied_token_gather(graph)
    assert name == "/transformer/wte/Gather"
    assert share_tied_embedding(graph, name) == "token lookup reads the head's weight (one fp table)"
    assert "transformer.wte.weight" not in passes.initializers(graph)
    assert size - _weight_bytes(graph) == 256 * 64 * 4 - 2 * 8  # the table, less two int64 shape constants
    # The same values, read from the head's copy: prefill and a one-token decode step match exactly.
    same_outputs(prefill, run_decoder(graph), atol=0)
    same_outputs(decode, run_decoder(graph, n_tokens=1, past=5), atol=0)


def test_untied_head_keeps_its_own_table(graphs):
    graph = _folded(graphs)
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    weight = passes.initializers(graph)[head.input[1]]
    w = numpy_helper.to_array(weight).copy()
    w[0, 0] += 1.0  # one changed value: no longer the embedding's transpose
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    assert tied_token_gather(graph) is None


def _dequantized_head_table(graph: onnx.ModelProto) -> np.ndarray:
    """(V, E) table of a symmetric int4 MatMulNBits head, unpacked by hand (low nibble first, zero 8)."""
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    inits = passes.initializers(graph)
    blocks = numpy_helper.to_array(inits[head.input[1]])  # (V, nb, block / 2)
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(blocks.shape[0], -1)  # (V, nb)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:2], -1)  # (V, nb, block)
    return ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(blocks.shape[0], -1)


def test_share_tied_embedding_reads_the_heads_int4_blocks(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantized = onnx_quant.ort_matmul_nbits(graph, bits=4, block_size=32)
    # Reference: the quantized graph whose lookup table holds the head's dequantized int4 values.
    reference = onnx.ModelProto()
    reference.CopyFrom(quantized)
    table = passes.initializers(reference)["transformer.wte.weight"]
    table.CopyFrom(numpy_helper.from_array(_dequantized_head_table(quantized), table.name))
    size = _weight_bytes(quantized)
    assert share_tied_embedding(quantized, name) == "token lookup reads the head's int4 blocks (GatherBlockQuantized)"
    assert passes.op_counts(quantized)["GatherBlockQuantized"] == 1
    assert "transformer.wte.weight" not in passes.initializers(quantized)
    assert size - _weight_bytes(quantized) == 256 * 64 * 4 - 2 * 8
    same_outputs(run_decoder(reference, past=3), run_decoder(quantized, past=3), atol=1e-5)


def test_share_tied_embedding_leaves_a_padded_block_head_alone(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantized = onnx_quant.ort_matmul_nbits(graph, bits=4, block_size=128)  # K = 64: one padded block
    before = run_decoder(quantized)
    assert share_tied_embedding(quantized, name) == ""
    assert "transformer.wte.weight" in passes.initializers(quantized)
    same_outputs(before, run_decoder(quantized), atol=0)


def test_share_tied_embedding_reads_the_heads_dynamic_int8_weight(graphs, run_decoder, same_outputs):
    graph = _folded(graphs)
    name = tied_token_gather(graph)
    quantized = onnx_quant.ort_dynamic_int8(graph)
    head = next(n for n in quantized.graph.node if n.op_type == "MatMulInteger" and "lm_head" in n.name)
    inits = passes.initializers(quantized)
    # Reference: the lookup table holds the head's dequantized int8 values, (q - zero) * scale, as (V, E).
    q, zero = (numpy_helper.to_array(inits[head.input[i]]).astype(np.float32) for i in (1, 3))
    scale = numpy_helper.to_array(inits[head.input[1].replace("_quantized", "_scale")])  # ORT's naming
    reference = onnx.ModelProto()
    reference.CopyFrom(quantized)
    table = passes.initializers(reference)["transformer.wte.weight"]
    table.CopyFrom(numpy_helper.from_array(((q - zero) * scale).T.copy(), table.name))
    size = _weight_bytes(quantized)
    assert share_tied_embedding(quantized, name) == "token lookup reads the head's int8 weight (DequantizeLinear)"
    assert "transformer.wte.weight" not in passes.initializers(quantized)
    assert size - _weight_bytes(quantized) == 256 * 64 * 4 - 2 * 8
    same_outputs(run_decoder(reference, past=3), run_decoder(quantized, past=3), atol=1e-5)
