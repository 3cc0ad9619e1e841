"""Per-module precision (quantize overrides) through the exports: MatMulNBits with each node's own bits and
block, TensorRT Q/DQ per node, GGUF tensors at their own types; each validated against the torch model.
The graph-level tests run by default; the plan runs (export step, validation.json) are slow."""

import json
import logging

import numpy as np
import onnx
import pytest
import torch

from compress.catalog import step_configs
from compress.errors import PlanError
from compress.pipeline import run_plan
from compress.plan import parse_plan

OVERRIDES = {"h.0.*": {"bits": 8, "group_size": "per-channel"}, "h.1.attn.c_attn": {"bits": 16}}
QUANTIZE = {"quantize": {"method": "rtn", "bits": 4, "group_size": 32, "overrides": OVERRIDES}}


def plan_dict(model_dir, steps):
    return {"name": "t", "model": str(model_dir),
            "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 300}},
            "eval": {"latency": None, "targets": ["host"]}, "steps": steps}


@pytest.fixture(autouse=True)
def _quantize_registered():
    if "quantize" not in step_configs():
        pytest.skip("the quantize step is not registered in this checkout")


@pytest.fixture(scope="module")
def mixed():
    """A tiny model quantized with QUANTIZE's overrides (rtn), and its records."""
    from compress.quantization import QuantizeConfig, quantize
    from compress.quantization.modules import quant_linears
    from tests.tiny_models import tiny_model

    model = quantize(tiny_model(seed=3), QuantizeConfig(**QUANTIZE["quantize"]))
    return model, {n: m.record() for n, m in quant_linears(model).items()}


def _graph(model, records, target):
    from export.onnx import dequantized_copy
    from export.step import build_graph

    graph, _ = build_graph(target, dequantized_copy(model, records), {}, logging.getLogger("test"))
    return graph


def test_onnx_graph_has_each_nodes_bits_and_matches_torch(mixed, prefill_logits):
    from export import onnx_quant
    from export.step import ExportConfig

    model, records = mixed
    graph = _graph(model, records, ExportConfig(optimize=False))
    assert onnx_quant.write_for_ort(graph, records, accuracy_level=0) == {"MatMulNBits": 7, "QDQ": 0}
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()) == [4, 4, 4, 8, 8, 8, 8]
    assert all(b == 8 for name, b in bits.items() if "/h.0/" in name)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(prefill_logits(graph, ids), want, atol=1e-4, rtol=0)


def test_tensorrt_qdq_graph_per_node_matches_torch(mixed, prefill_logits):
    from export.tensorrt import TensorRTExport
    from export.trt_qdq import write_qdq
    from export.trt_spec import builder_flags, has_int8_weights

    model, records = mixed
    graph = _graph(model, records, TensorRTExport(format="tensorrt", precision="fp16", opset=21))
    assert write_qdq(graph, records) == {"int8": 4, "int4": 3}
    assert has_int8_weights(graph) and builder_flags("int4", False, True) == ["FP16", "INT8"]
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(prefill_logits(graph, ids), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_onnx_matmulnbits_takes_bits_and_block_per_node(tmp_path, trained_tiny):
    plan = parse_plan(plan_dict(trained_tiny[0], [QUANTIZE, {"export": {"format": "onnx", "accuracy_level": 0}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    quantized = json.loads((tmp_path / "run" / "01-quantize-rtn-w4g32-mixed" / "step.json").read_text())
    assert "rtn per module: int8 per-channel x4, float x2, int4 g32 x3," in quantized["summary"]  # float: c_attn, head
    step = tmp_path / "run" / "02-export-onnx"
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["ppl_rel_diff"] < 1e-4 and v["max_abs_logit_diff"] < 1e-3  # the same integers
    nodes = {n.name.split("/")[2] + "." + n.name.split("/")[3] + "." + n.name.split("/")[4]:
             {a.name: a.i for a in n.attribute} for n in onnx.load(step / "model.onnx").graph.node
             if n.op_type == "MatMulNBits"}
    assert {k: (a["bits"], a["block_size"]) for k, a in nodes.items()} == {
        "h.0.attn.c_attn": (8, 64), "h.0.attn.c_proj": (8, 64), "h.0.mlp.c_fc": (8, 64), "h.0.mlp.c_proj": (8, 256),
        "h.1.attn.c_proj": (4, 32), "h.1.mlp.c_fc": (4, 32), "h.1.mlp.c_proj": (4, 32)}  # h.1 c_attn: float MatMul


@pytest.mark.slow
def test_tensorrt_int4_writes_each_modules_qdq(tmp_path, trained_tiny):
    from export.trt_runner import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine would be built (see test_tensorrt_gpu.py)")
    plan = parse_plan(plan_dict(trained_tiny[0], [QUANTIZE, {"export": {
        "format": "tensorrt", "precision": "int4", "opset": 21, "validation": {"tokens": 256, "windows": 1}}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-tensorrt"
    v = json.loads((step / "validation.json").read_text())
    assert v["ran"] and v["passed"] and v["ppl_rel_diff"] < 1e-3
    info = json.loads((step / "step.json").read_text())["info"]
    assert info["qdq_layers"] == {"int8": 4, "int4": 3}
    spec = json.loads((step / "engine.json").read_text())
    assert spec["builder_flags"] == ["FP16", "INT8"]  # int8 weights beside the int4 ones


@pytest.mark.parametrize("export,problem", [
    ({"format": "tensorrt", "precision": "int8"}, "make int4 modules: use precision int4"),
    ({"format": "tensorrt", "precision": "int4", "opset": 21, "builder": "edge-llm"},
     "Edge-LLM's INT4 takes int4 group_size 128 only"),
])
def test_tensorrt_refuses_grids_it_cannot_build_at_plan_time(trained_tiny, export, problem):
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(trained_tiny[0], [QUANTIZE, {"export": export}]))
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_gguf_writes_each_matrix_at_its_own_type(tmp_path, trained_tiny):
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")
    from gguf import GGUFReader

    plan = parse_plan(plan_dict(trained_tiny[0], [QUANTIZE, {"export": {"format": "gguf", "type": "q4_0"}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-gguf"
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(step / "model.gguf")).tensors}
    assert [types[f"blk.0.{n}.weight"] for n in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")] == ["Q8_0"] * 4
    assert [types[f"blk.1.{n}.weight"] for n in ("attn_output", "ffn_up", "ffn_down")] == ["Q4_0"] * 3
    assert types["blk.1.attn_qkv.weight"] == "F16"  # kept float
    how = json.loads((step / "step.json").read_text())["info"]["tensors"]
    assert sum(h == "codes" for h in how.values()) == 7  # every quantized matrix carried code for code
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"]  # within the re-quantized limit: the float token table is written as q8_0


def test_gguf_type_per_module():
    from compress.quantization import QuantizeConfig, quantize
    from compress.quantization.modules import quant_linears
    from export.gguf import own_type
    from tests.tiny_models import tiny_model

    cfg = QuantizeConfig(method="rtn", bits=4, group_size=32, overrides={"h.0.*": {"bits": 8}})
    records = {n: m.record() for n, m in quant_linears(quantize(tiny_model(), cfg)).items()}
    r8, r4 = records["transformer.h.0.mlp.c_fc"], records["transformer.h.1.mlp.c_fc"]
    assert (own_type(r8, "q4_0"), own_type(r4, "q4_0"), own_type(None, "q4_0")) == ("q8_0", "q4_0", "f16")
    assert own_type(r8, "f16") == "f16" and own_type(r4, "f32") == "f32"  # a float type asked for: all float


def test_onnx_head_at_its_own_group_matches_torch(prefill_logits):
    """The search's form of a head at another group than the step's: lm_head keep + an lm_head override."""
    from compress.quantization import QuantizeConfig, quantize
    from compress.quantization.modules import quant_linears
    from export import onnx_quant
    from export.step import ExportConfig
    from tests.tiny_models import tiny_model

    cfg = QuantizeConfig(method="rtn", bits=4, group_size=64, overrides={"lm_head": {"bits": 4, "group_size": 32}})
    model = quantize(tiny_model(seed=3), cfg)
    records = {n: m.record() for n, m in quant_linears(model).items()}
    assert (records["lm_head"].bits, records["lm_head"].group_size) == (4, 32)
    graph = _graph(model, records, ExportConfig(optimize=False))
    onnx_quant.write_for_ort(graph, records, accuracy_level=0)
    blocks = {n.name: {a.name: a.i for a in n.attribute}["block_size"] for n in graph.graph.node
              if n.op_type == "MatMulNBits"}
    assert sorted(set(blocks.values())) == [32, 64]
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(prefill_logits(graph, ids), want, atol=1e-4, rtol=0)
