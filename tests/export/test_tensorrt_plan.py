"""A plan with a TensorRT export, end to end through the plan runner, on a machine without TensorRT:
the step passes, writes the checked ONNX + engine.json + build_engine.sh, and its metrics say
"to be built on target" (not measured, not failed)."""

from __future__ import annotations

import json

import pytest

from compress.plan import parse_plan
from compress.pipeline import run_plan
from evalsuite.metrics import STATUS_MEASURED, STATUS_TO_BUILD


@pytest.mark.slow
def test_quantize_then_tensorrt_int4_is_to_be_built_on_target(tmp_path, trained_tiny):
    from export.trt_runner import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine would be built and measured")
    model_dir, _ = trained_tiny
    plan = parse_plan({
        "name": "trt", "model": str(model_dir),
        "data": {"train": {"builtin": "python-docs", "split": "train", "max_chars": 20_000},
                 "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 1500}},
        "eval": {"latency": {"prompt": 16, "new_tokens": 8, "repeats": 1, "warmup": 0}, "targets": ["orin-nano"]},
        "steps": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 64}},
                  {"export": {"format": "tensorrt", "precision": "int4", "opset": 21,
                              "validation": {"tokens": 512, "windows": 1}}}],
    })
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-tensorrt"
    for name in ("model.onnx", "config.json", "engine.json", "build_engine.sh", "DONE"):
        assert (step / name).is_file(), name
    spec = json.loads((step / "engine.json").read_text())
    assert spec["precision"] == "int4" and spec["builder_flags"] == ["FP16"]
    metrics = json.loads((step / "metrics.json").read_text())
    assert metrics["status"] == STATUS_TO_BUILD and metrics["backend"] == "tensorrt"
    assert metrics["ppl"] is None and metrics["projected_decode_tokens_per_s"]["orin-nano"] > 0
    base = json.loads((tmp_path / "run" / "00-base" / "metrics.json").read_text())
    assert base["status"] == STATUS_MEASURED
    step_info = json.loads((step / "step.json").read_text())
    assert step_info["info"]["qdq_layers"] == {"int4": 8}  # 2 layers x (c_attn, attn.c_proj, c_fc, mlp.c_proj)


def test_tensorrt_int4_for_edge_llm_refuses_widths_that_are_not_multiples_of_128(trained_tiny):
    from compress.errors import PlanError

    plan = {"name": "trt", "model": str(trained_tiny[0]),
            "data": {"train": {"builtin": "python-docs", "split": "train", "max_chars": 20_000},
                     "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 300}},
            "steps": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}},
                      {"export": {"format": "tensorrt", "precision": "int4", "opset": 21, "builder": "edge-llm"}}]}
    with pytest.raises(PlanError) as e:
        parse_plan(plan)
    msg = str(e.value)
    assert "steps[1].export.builder: n_embd = 64" in msg and "widths that work: 128" in msg
    assert "Edge-LLM" in msg and "TENSORRT.md" in msg and "group_size 128 only" in msg
    assert "n_inner" not in msg  # 256 is a multiple of 128
    plan["steps"][1]["export"]["builder"] = "trtexec"  # plain TensorRT: blocks along K, no such rule
    parse_plan(plan)
    plan["steps"][1]["export"]["precision"] = "int8"
    plan["steps"][0]["quantize"] = {"method": "rtn", "bits": 8, "group_size": "per-channel"}
    parse_plan(plan)  # int8 has no such rule


def test_the_int4_width_refusal_names_the_prune_rounding_that_fixes_it():
    """gpt2 (12 heads of 64) pruned to 9 heads (n_embd 576) and n_inner 1984: neither is a multiple of 128."""
    from compress.errors import PlanError

    plan = {"name": "trt", "model": "gpt2",
            "data": {"train": {"builtin": "python-docs"}, "eval": {"builtin": "python-docs", "split": "heldout"}},
            "steps": [{"prune": {"importance": "magnitude", "width": 0.25, "mlp": 0.35}},
                      {"quantize": {"method": "rtn", "bits": 4, "group_size": 128}},
                      {"export": {"format": "tensorrt", "precision": "int4", "opset": 21, "builder": "edge-llm"}}]}
    with pytest.raises(PlanError) as e:
        parse_plan(plan)
    found = e.value.problems
    fix = "round_to {n_inner: 128, n_embd: 128}"
    export = [p for p in found if p.startswith("steps[2].export.builder")]
    assert len(export) == 2 and all(fix in p for p in export), found  # n_embd 576 and n_inner 1984
    assert "n_embd = 576" in export[0] and "(n_embd 512)" in export[0]
    quantize = [p for p in found if p.startswith("steps[1].quantize.group_size")]
    assert quantize and all(fix in p for p in quantize), found  # group 128 meets the same widths
    plan["steps"][0]["prune"]["round_to"] = {"n_inner": 128, "n_embd": 128}
    checked = parse_plan(plan)
    assert checked.steps[2].builder == "edge-llm"
