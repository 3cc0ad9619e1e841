"""MatMulNBits / QDQ written from the quantize step's integers reproduce the torch quantized model."""

import copy
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from compress.errors import UserError
from compress.quantization.handoff import LinearCodes
from compress.quantization.modules import install
from export import onnx_quant, passes
from export.onnx import dequantized_copy, export_decoder, save_onnx
from export.ort_runner import OrtRunner

# ORT's MatMulNBits (accuracy_level 0: fp32 compute) and the QDQ path compute the same fp32 products
# as QuantLinear, up to summation order: observed ~3e-7 on logits of size ~1.
ATOL = 1e-4
LINEARS = [f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def codes(name: str, module, bits: int, group: int | None, sym: bool) -> LinearCodes:
    """Round-to-nearest integers for one layer, built here (independent of the quantize step's code)."""
    w = module.weight.detach().t() if name != "lm_head" else module.weight.detach()  # (out, in)
    out_f, in_f = w.shape
    g = group or in_f
    wg = w.reshape(out_f, in_f // g, g)
    if sym:
        scales = wg.abs().amax(-1) / (2 ** (bits - 1) - 1)
        zeros = torch.full_like(scales, 2 ** (bits - 1))
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        scales = (hi - lo) / (2 ** bits - 1)
        zeros = torch.round(-lo / scales)
    q = torch.clamp(torch.round(wg / scales[..., None]) + zeros[..., None], 0, 2 ** bits - 1)
    bias = None if getattr(module, "bias", None) is None else module.bias.detach().clone()
    return LinearCodes(name, bits, g, q.reshape(out_f, in_f).to(torch.uint8), scales.float(),
                           zeros.to(torch.uint8), bias)


def quantize(model, bits, group, sym, head=False, input_scale=None):
    names = LINEARS + (["lm_head"] if head else [])
    records = {n: codes(n, model.get_submodule(n), bits, group, sym) for n in names}
    if input_scale is not None:
        records = {n: replace(r, input_scale=input_scale) for n, r in records.items()}
    return install(copy.deepcopy(model), records), records


def export_quantized(qmodel, records, tmp_path, accuracy_level=0):
    graph = export_decoder(dequantized_copy(qmodel, records), opset=18)
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    kinds = onnx_quant.write_for_ort(graph, records, accuracy_level)
    return save_onnx(graph, tmp_path / "model.onnx"), kinds, graph


@pytest.fixture(scope="module")
def model():
    from tests.tiny_models import tiny_model

    return tiny_model(seed=3)


IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits,group,sym,head", [(4, 32, True, True), (4, 16, False, False),
                                                 (8, None, True, False), (4, None, False, True)])
def test_matmulnbits_from_integers_matches_torch_quantized(model, tmp_path, bits, group, sym, head):
    qmodel, records = quantize(model, bits, group, sym, head)
    path, kinds, graph = export_quantized(qmodel, records, tmp_path)
    assert kinds == {"MatMulNBits": len(records), "QDQ": 0}
    assert passes.op_counts(graph)["MatMulNBits"] == len(records)
    runner = OrtRunner(path, vocab_size=256, max_positions=128)
    logits, past = runner.forward(IDS[:, :20])
    with torch.no_grad():
        ref = qmodel(IDS[:, :20], use_cache=True)
        ref_next = qmodel(IDS[:, 20:21], past_key_values=ref.past_key_values, use_cache=True).logits
    torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(runner.forward(IDS[:, 20:21], past)[0], ref_next, atol=ATOL, rtol=0)
    with torch.no_grad():  # and the codes really matter: fp32 logits are farther away
        assert (model(IDS[:, :20]).logits - logits).abs().max() > 10 * ATOL


def test_w8a8_qdq_with_the_steps_input_scale_matches_torch(model, tmp_path):
    qmodel, records = quantize(model, 8, None, True, input_scale=0.02)
    path, kinds, graph = export_quantized(qmodel, records, tmp_path)
    assert kinds == {"MatMulNBits": 0, "QDQ": len(records)}
    counts = passes.op_counts(graph)
    assert counts["QuantizeLinear"] == len(records) and counts["DequantizeLinear"] == 2 * len(records)
    logits, _ = OrtRunner(path, vocab_size=256, max_positions=128).forward(IDS)
    with torch.no_grad():
        ref = qmodel(IDS).logits
    # An activation landing on a rounding boundary may round differently after ~1e-7 of fp32 noise.
    torch.testing.assert_close(logits, ref, atol=1e-3, rtol=0)


def test_accuracy_level_4_quantizes_activations_but_stays_close(model, tmp_path):
    qmodel, records = quantize(model, 4, 32, True)
    path, _, graph = export_quantized(qmodel, records, tmp_path, accuracy_level=4)
    node = next(n for n in graph.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 4
    logits, _ = OrtRunner(path, vocab_size=256, max_positions=128).forward(IDS)
    with torch.no_grad():
        ref = qmodel(IDS).logits
    assert (logits - ref).abs().max() < 0.05


def test_pack_nbits_layout():
    q = np.arange(64, dtype=np.uint8).reshape(2, 32) % 16  # (N=2, K=32)
    packed = onnx_quant.pack_nbits(q, bits=4, block=16)
    assert packed.shape == (2, 2, 8)  # (N, K / block, block * 4 / 8)
    low, high = packed & 0x0F, packed >> 4  # element 2j in the low nibble, 2j+1 in the high one
    np.testing.assert_array_equal(np.stack([low, high], -1).reshape(2, 32), q)
    assert onnx_quant.pack_nbits(q, bits=8, block=16).shape == (2, 2, 16)
    zp = onnx_quant.pack_zero_points(np.array([[1, 2, 3]], np.uint8), bits=4)
    np.testing.assert_array_equal(zp, [[0x21, 0x83]])  # odd count padded with the default zero, 8


@pytest.mark.parametrize("group,block", [(64, 64), (384, 128), (48, 16), (512, 256), (3072, 256)])
def test_nbits_block_size(group, block):
    assert onnx_quant.nbits_block_size(group) == block


def test_group_without_power_of_two_block_is_a_user_error():
    with pytest.raises(UserError, match="group_size 40"):
        onnx_quant.nbits_block_size(40)


def test_codes_that_do_not_match_the_graph_are_refused(model):
    qmodel, records = quantize(model, 4, 32, True)
    graph = export_decoder(model, opset=18)  # the fp32 model, not the dequantized one
    passes.gemm_to_matmul(graph)
    with pytest.raises(UserError, match="differs from the dequantized codes"):
        onnx_quant.write_for_ort(graph, records)
    with pytest.raises(UserError, match="no weight MatMul for transformer.h.9"):
        onnx_quant.write_for_ort(graph, {"transformer.h.9.attn.c_attn": records[LINEARS[0]]})


@pytest.fixture(scope="module")
def fp32_graph(model):
    graph = export_decoder(model, opset=18)
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    return graph


@pytest.mark.parametrize("method", ["dynamic-int8", "int8", "int4"])
def test_ort_quantizers_on_fp32(model, fp32_graph, tmp_path, method):
    graph = onnx.ModelProto()
    graph.CopyFrom(fp32_graph)
    if method == "dynamic-int8":
        out = onnx_quant.ort_dynamic_int8(graph)
        assert onnx_quant.quantized_counts(out).get("DynamicQuantizeMatMul", 0) + \
            onnx_quant.quantized_counts(out).get("MatMulInteger", 0) == 9  # 8 projections + the head
    else:
        out = onnx_quant.ort_matmul_nbits(graph, bits=int(method[3:]), block_size=32)
        assert onnx_quant.quantized_counts(out) == {"MatMulNBits": 9}
    logits, _ = OrtRunner(save_onnx(out, tmp_path / "q.onnx"), vocab_size=256, max_positions=128).forward(IDS)
    with torch.no_grad():
        ref = model(IDS).logits
    err = (logits - ref).abs().max()
    assert 0 < err < 0.1  # quantized (not identical), and close for weights of scale 0.02
