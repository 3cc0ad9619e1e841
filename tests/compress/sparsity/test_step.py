"""The sparsify step in plans: plan-time refusals, the saved stock GPT-2, resume, and the end-to-end plan
sparsify 2:4 -> quantize gptq -> export tensorrt (the engine build checked statically, as on any CPU)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress.errors import PlanError
from compress.plan import parse_plan
from compress.pipeline import run_plan
from compress.sparsity.pattern import holds, model_pattern


@pytest.fixture
def tiny_dir(random_tiny_dir):
    return random_tiny_dir


def plan_dict(model, steps, train=True):
    from tests.conftest import text_plan

    return text_plan(model, steps, train)


@pytest.mark.parametrize("body,message", [
    ({"sparsity": 1.0}, r"steps\[0\]\.sparsify\.sparsity: .*1 zeroes every weight"),
    ({"sparsity": 0.0}, r"steps\[0\]\.sparsify\.sparsity: .*0 prunes nothing"),
    ({"pattern": "4:4"}, r"steps\[0\]\.sparsify\.pattern: .*4:4 keeps every weight"),
    ({"pattern": "0:4"}, r"steps\[0\]\.sparsify\.pattern: .*0:4 keeps none"),
    ({"pattern": "2-4"}, r"steps\[0\]\.sparsify\.pattern: .*is not N:M"),
    ({"pattern": "2:4", "sparsity": 0.5}, r"exactly one of sparsity .* and pattern"),
    ({"method": "wanda"}, r"exactly one of sparsity"),
    ({"pattern": "2:4", "method": "obs"}, r"steps\[0\]\.sparsify\.method"),
    ({"pattern": "2:4", "layers": ["lm_head"]}, r"steps\[0\]\.sparsify\.layers"),
    ({"pattern": "2:48"}, r"steps\[0\]\.sparsify\.pattern: 2:48: groups of 48 do not divide n_embd 64"),
])
def test_bad_input_is_refused_at_plan_time(tiny_dir, body, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(plan_dict(tiny_dir, [{"sparsify": body}]))


def test_plan_order_is_checked(tiny_dir):
    with pytest.raises(PlanError, match=r"steps\[1\]\.sparsify: sparsify needs a full-precision model: move it "
                                        r"before steps\[0\]\.quantize"):
        parse_plan(plan_dict(tiny_dir, [{"quantize": {"method": "rtn", "bits": 8}},
                                        {"sparsify": {"pattern": "2:4"}}]))
    with pytest.raises(PlanError, match=r"steps\[0\]\.sparsify\.method: wanda calibrates on data.train"):
        parse_plan(plan_dict(tiny_dir, [{"sparsify": {"method": "wanda", "pattern": "2:4"}}], train=False))
    with pytest.raises(PlanError, match=r"steps\[1\]\.prune: prune removes input channels of the 2:4 groups"):
        parse_plan(plan_dict(tiny_dir, [{"sparsify": {"pattern": "2:4"}}, {"prune": {"mlp": 0.5}}]))
    parse_plan(plan_dict(tiny_dir, [{"sparsify": {"method": "magnitude", "pattern": "2:4"}}], train=False))


def test_plan_state_records_the_sparsity(tiny_dir):
    from compress.plan_state import PlanState
    from compress.sparsity.config import SparsifyConfig

    state, problems = SparsifyConfig(method="sparsegpt", pattern="2:4").check(
        PlanState(train_data=True, eval_seq_len=64, at="steps[0].sparsify"))
    assert problems == [] and state.sparsity.pattern == "2:4" and state.sparsity.fraction == 0.5
    assert state.sparsity.by == "steps[0].sparsify" and state.sparsity.method == "sparsegpt"
    from compress.distillation.config import DistillConfig

    after, notes = DistillConfig(tokens=1000).check(state)
    assert after.sparsity is None and notes[0].note and "fill in" in notes[0].msg


def test_step_saves_a_stock_gpt2_reports_every_matrix_and_resumes(tmp_path, tiny_dir):
    from transformers import GPT2LMHeadModel

    plan = parse_plan(plan_dict(tiny_dir, [{"sparsify": {"method": "wanda", "sparsity": 0.5, "calib_tokens": 1024,
                                                         "seq_len": 64}}]))
    first = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in first.records] == ["ran", "ran"]
    step = tmp_path / "run" / "01-sparsify-wanda-50pct"
    info = json.loads((step / "step.json").read_text())["info"]
    assert len(info["layers"]) == 8 and all(v == {"sparsity": 0.5, "pattern": None} for v in info["layers"].values())
    assert info["requested"] == {"sparsity": 0.5, "pattern": None} and info["zero_params"] > 0
    model = GPT2LMHeadModel.from_pretrained(step / "model")  # plain transformers, no gpt2-edge code
    w = model.transformer.h[1].mlp.c_proj.weight
    assert float((w == 0).float().mean()) == 0.5
    second = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in second.records] == ["cached", "cached"]  # the same config, input and data.train


def _trt_unavailable() -> None:
    from export.trt_runner import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine would be built (see test_tensorrt_gpu.py)")


def _int4_weights(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if t.name.endswith(".w_int4")}


def test_sparsify_2_4_then_gptq_then_tensorrt_end_to_end(tmp_path, tiny_dir):
    _trt_unavailable()
    plan = parse_plan(plan_dict(tiny_dir, [
        {"sparsify": {"method": "sparsegpt", "pattern": "2:4", "calib_tokens": 1024, "seq_len": 64}},
        {"quantize": {"method": "gptq", "bits": 4, "group_size": 32, "calib_samples": 8, "calib_seq_len": 64}},
        {"export": {"format": "tensorrt", "precision": "int4", "opset": 21,
                    "validation": {"tokens": 256, "windows": 1}}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    from compress.models import load_model

    quantized = load_model(run / "02-quantize-gptq-w4g32" / "model")
    assert model_pattern(quantized) == "2:4"  # the dequantized codes still hold 2:4
    step = run / "03-export-tensorrt"
    spec = json.loads((step / "engine.json").read_text())
    assert spec["sparse_weights"] is True and spec["precision"] == "int4"
    assert "--sparsity=enable" in (step / "build_engine.sh").read_text()
    weights = _int4_weights(step / "model.onnx")
    assert len(weights) == 8
    for name, q in weights.items():  # (K, N) signed codes, zero point 0: a zero code is a zero weight
        assert holds(_rows(q), 2, 4), name
    info = json.loads((step / "step.json").read_text())["info"]
    assert info["sparse_weights"] is True and "2:4 sparse weights" in json.loads(
        (step / "step.json").read_text())["summary"]


def _rows(q: np.ndarray):
    """ONNX (K, N) weight codes as torch [N, K]: the input dimension K along each row."""
    import torch

    return torch.from_numpy(q.astype(np.int8).T.copy())


def test_dense_tensorrt_export_leaves_sparse_weights_off(tmp_path, tiny_dir):
    from export.trt_spec import trtexec_args

    spec = {"onnx": "model.onnx", "engine": "model.engine", "shapes": {}, "strongly_typed": False,
            "builder_flags": ["FP16"], "timing_cache": "t", "optimization_level": 3, "workspace_mib": 64,
            "target": {"tensorrt": "10.3"}}
    assert "--sparsity=enable" not in trtexec_args(spec)
    assert "--sparsity=enable" in trtexec_args(spec | {"sparse_weights": True})


def test_distill_after_sparsify_drops_the_stale_record(tmp_path, tiny_dir):
    """distill trains every weight (the pruned ones too): the saved model must not keep a record claiming
    2:4 (GPTQ would then keep zeros that are gone, the TensorRT export enable sparse weights)."""
    from compress.models import load_model
    from compress.sparsity.pattern import CONFIG_KEY

    plan = parse_plan(plan_dict(tiny_dir, [
        {"sparsify": {"method": "magnitude", "pattern": "2:4"}},
        {"distill": {"tokens": 1024, "batch_tokens": 512, "seq_len": 64, "eval_tokens": 0, "warmup_steps": 1,
                     "checkpoint_every": 1000}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    sparse = json.loads((tmp_path / "run" / "01-sparsify-magnitude-2of4" / "model" / "config.json").read_text())
    assert sparse[CONFIG_KEY]["pattern"] == "2:4"
    model_dir = tmp_path / "run" / "02-distill" / "model"
    assert CONFIG_KEY not in json.loads((model_dir / "config.json").read_text())
    assert model_pattern(load_model(model_dir)) is None  # the zeros did fill in: the record would have lied
