"""Per-module precision (quantize overrides) through the exports: MatMulNBits with each node's own bits and
block, TensorRT Q/DQ per node, GGUF tensors at their own types; each validated against the torch model."""

import json

import onnx
import pytest

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


def test_onnx_matmulnbits_takes_bits_and_block_per_node(tmp_path, trained_tiny):
    plan = parse_plan(plan_dict(trained_tiny[0], [QUANTIZE, {"export": {"format": "onnx", "accuracy_level": 0}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-onnx"
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["ppl_rel_diff"] < 1e-4 and v["max_abs_logit_diff"] < 1e-3  # the same integers
    nodes = {n.name.split("/")[2] + "." + n.name.split("/")[3] + "." + n.name.split("/")[4]:
             {a.name: a.i for a in n.attribute} for n in onnx.load(step / "model.onnx").graph.node
             if n.op_type == "MatMulNBits"}
    assert {k: (a["bits"], a["block_size"]) for k, a in nodes.items()} == {
        "h.0.attn.c_attn": (8, 64), "h.0.attn.c_proj": (8, 64), "h.0.mlp.c_fc": (8, 64), "h.0.mlp.c_proj": (8, 256),
        "h.1.attn.c_proj": (4, 32), "h.1.mlp.c_fc": (4, 32), "h.1.mlp.c_proj": (4, 32)}  # h.1 c_attn: float MatMul


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
