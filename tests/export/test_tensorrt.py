"""The TensorRT export step without TensorRT: Q/DQ from the quantize step's integers, the static check
failing the step, engine.json + build_engine.sh, the CLI's check/audit, "to be built on target"."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from compress.errors import UserError
from compress.plan import LatencyConfig
from compress.step_inputs import EvalInput, StepInputs
from compress.step_api import StepContext
from evalsuite.backends import open_backend
from evalsuite.errors import BackendUnavailable
from export.tensorrt import ENGINE_JSON, SCRIPT, finish_step, main
from export.trt_qdq import pack_int4, write_qdq
from export.trt_check import check_model, errors
from tests.tiny_models import tiny_model

GROUP = 64  # a block size TensorRT documents for INT4


def export_graph(model, opset=18):
    """The graph the export step hands to finish_step for format tensorrt (standard ops only)."""
    from export.step import build_graph
    from export.tensorrt import TensorRTExport

    graph, _ = build_graph(TensorRTExport(format="tensorrt", precision="fp16", opset=opset), model, {},
                           logging.getLogger("test"))
    return graph


def symmetric_records(model, names, bits):
    """Symmetric round-to-nearest codes in the quantize step's hand-off layout (unsigned, zero 2**(bits-1))."""
    from compress.quantization.handoff import LinearCodes

    half, out = 2 ** (bits - 1), {}
    for name in names:
        layer = model.get_submodule(name)
        w = layer.weight.detach().T  # Conv1D stores (in, out) -> (out, in)
        group = GROUP if bits == 4 else w.shape[1]
        wg = w.reshape(w.shape[0], -1, group)  # (out, n_groups, G)
        scale = wg.abs().amax(-1) / (half - 1)
        q = torch.clamp(torch.round(wg / scale[..., None]), -half, half - 1) + half
        out[name] = LinearCodes(name, bits, group, q.reshape(w.shape).to(torch.uint8), scale.float(),
                                    torch.full_like(scale, half, dtype=torch.uint8), layer.bias.detach().clone())
    return out


@pytest.fixture(scope="module")
def fp_graph():
    return export_graph(tiny_model(seed=0))


def make_step_dir(tmp_path: Path, graph: onnx.ModelProto, model=None) -> Path:
    step = tmp_path / "06-export-tensorrt"
    step.mkdir()
    onnx.save(graph, str(step / "model.onnx"))
    (model or tiny_model(seed=0)).config.to_json_file(step / "config.json")
    return step


def context(step: Path, input_dir: Path, latency=LatencyConfig(prompt=32, new_tokens=16)):
    inputs = StepInputs(declared=frozenset({"eval", "latency"}), _latency=latency,
                        _eval=EvalInput(SimpleNamespace(seq_len=64), digest=""))
    return StepContext(inputs=inputs, name=step.name, out_dir=step, work_dir=step, input_dir=input_dir,
                       base_dir=input_dir, device=torch.device("cpu"), log=logging.getLogger("test"))


def cfg(precision="fp16", profile=None):
    return SimpleNamespace(precision=precision, profile=profile)


@pytest.fixture
def no_tensorrt():
    """These tests are about machines without TensorRT (where the step builds no engine)."""
    from export.trt_runner import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the step builds the engine (see test_tensorrt_gpu.py)")


def test_finish_step_writes_engine_json_and_build_script(tmp_path, fp_graph, no_tensorrt):
    step = make_step_dir(tmp_path, fp_graph)
    out = finish_step(cfg("fp16"), step / "model.onnx", context(step, tmp_path))
    assert (out.artifact, out.backend, out.info["engine_built"]) == ("model.onnx", "tensorrt", False)
    assert "to be built on target" in out.summary
    spec = json.loads((step / ENGINE_JSON).read_text())
    assert spec["precision"] == "fp16" and spec["builder_flags"] == ["FP16"] and spec["built"] is None
    # from the plan: opt 32 + 16 // 2; max: prompts of 32 (64-token windows in 2 chunks), past 96: 128 in all
    assert spec["profile"] == {"batch": [1, 1, 1], "prompt": [1, 1, 32], "past": [0, 40, 96]}
    inputs = {i.name for i in fp_graph.graph.input}
    assert set(spec["shapes"]) == inputs  # every dynamic input, names read from the graph
    for point in ("min", "opt", "max"):
        ids, mask = spec["shapes"]["input_ids"][point], spec["shapes"]["attention_mask"][point]
        assert mask[1] == ids[1] + spec["shapes"]["past_key_values.0.key"][point][2]
    script = (step / SCRIPT).read_text()
    for flag in ("--onnx=model.onnx", "--saveEngine=model.engine", "--fp16", "--minShapes=input_ids:1x1,",
                 "--maxShapes=", "--timingCacheFile=timing.cache", "--builderOptimizationLevel=3",
                 "--memPoolSize=workspace:1024", "--exportLayerInfo=layers.json"):
        assert flag in script
    assert subprocess.run(["bash", "-n", str(step / SCRIPT)]).returncode == 0  # valid shell
    assert (step / SCRIPT).stat().st_mode & 0o111


def test_planted_contrib_op_fails_the_step_naming_the_node(tmp_path, fp_graph):
    graph = onnx.ModelProto()
    graph.CopyFrom(fp_graph)
    node = next(n for n in graph.graph.node if n.op_type == "LayerNormalization")
    node.domain, node.name = "com.microsoft", "planted_ln"
    graph.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    step = make_step_dir(tmp_path, graph)
    with pytest.raises(UserError, match="planted_ln") as e:
        finish_step(cfg("fp16"), step / "model.onnx", context(step, tmp_path))
    assert "contrib-op" in str(e.value)
    assert not (step / ENGINE_JSON).exists()


def test_int8_without_quantize_step_is_refused(tmp_path, fp_graph):
    step = make_step_dir(tmp_path, fp_graph)
    with pytest.raises(UserError, match="precision-mismatch"):
        finish_step(cfg("int8"), step / "model.onnx", context(step, tmp_path))


def test_profile_too_short_for_the_latency_run_is_refused(tmp_path, fp_graph):
    from export.profiles import TensorRTProfile

    step = make_step_dir(tmp_path, fp_graph)
    short = TensorRTProfile(prompt=(1, 1, 64), past=(0, 16, 32))
    with pytest.raises(UserError, match="latency"):
        finish_step(cfg("fp16", short), step / "model.onnx", context(step, tmp_path))


def test_pack_int4_low_nibble_first():
    packed = pack_int4(np.array([1, -2, 3], np.int8))
    assert packed == bytes([0x01 | (0x0E << 4), 0x03])
    t = onnx.helper.make_tensor("w", onnx.TensorProto.INT4, [3], packed, raw=True)
    assert onnx.numpy_helper.to_array(t).tolist() == [1, -2, 3]


@pytest.mark.parametrize("bits, opset", [(8, 18), (4, 21)])
def test_qdq_graph_computes_the_dequantized_model(bits, opset, prefill_logits):
    """The Q/DQ graph written for TensorRT computes exactly the dequantized fp32 graph: codes, scales,
    axis, block size and int4 packing are the quantize step's numbers."""
    from export.onnx import dequantized_copy

    model = tiny_model(seed=1)
    records = symmetric_records(model, ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"], bits)
    graph = export_graph(dequantized_copy(model, records), opset)
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    want = prefill_logits(graph, ids)
    assert write_qdq(graph, records) == {f"int{bits}": 2}
    dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    names = {i.name for i in graph.graph.initializer}
    assert len(dq) == 2 and "transformer.h.0.attn.c_attn.weight" not in names  # float weight replaced
    findings = check_model(graph, f"int{bits}")
    assert errors(findings) == []
    assert {f.code for f in findings if f.severity == "warning"} <= {"not-quantized", "opset"}
    np.testing.assert_array_equal(prefill_logits(graph, ids), want)


def test_asymmetric_codes_are_refused(fp_graph):
    model = tiny_model(seed=0)
    records = symmetric_records(model, ["transformer.h.0.attn.c_attn"], 8)
    ql = records["transformer.h.0.attn.c_attn"]
    records = {ql.name: type(ql)(**{**ql.__dict__, "zeros": ql.zeros + 3})}
    graph = onnx.ModelProto()
    graph.CopyFrom(fp_graph)
    with pytest.raises(UserError, match="sym: true"):
        write_qdq(graph, records)


def test_int4_needs_opset_21(fp_graph):
    records = symmetric_records(tiny_model(seed=0), ["transformer.h.0.attn.c_attn"], 4)
    graph = onnx.ModelProto()
    graph.CopyFrom(fp_graph)
    with pytest.raises(UserError, match="opset: 21"):
        write_qdq(graph, records)


def test_runner_is_unavailable_here_so_the_step_is_to_be_built(tmp_path, fp_graph, no_tensorrt):
    step = make_step_dir(tmp_path, fp_graph)
    finish_step(cfg("fp16"), step / "model.onnx", context(step, tmp_path))
    with pytest.raises(BackendUnavailable, match="build_engine.sh"):
        open_backend("tensorrt", step / "model.onnx", "cpu")


def test_cli_check_and_audit(tmp_path, fp_graph, capsys, no_tensorrt):
    step = make_step_dir(tmp_path, fp_graph)
    finish_step(cfg("fp16"), step / "model.onnx", context(step, tmp_path))
    assert main(["check", str(step)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert main(["check", str(step), "--target", "8.5"]) == 1  # no LayerNormalization before 8.6
    assert "LayerNormalization needs TensorRT 8.6+" in capsys.readouterr().out
    spec = json.loads((step / ENGINE_JSON).read_text())
    spec["precision"] = "int8"
    (step / ENGINE_JSON).write_text(json.dumps(spec))
    layers = {"Layers": [{"Name": "fc1", "LayerType": "CaskGemmMatrixMultiply",
                          "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}],
                          "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}]}]}
    (step / "layers.json").write_text(json.dumps(layers))
    assert main(["audit", str(step)]) == 0
    assert "fc1: CaskGemmMatrixMultiply runs in FP16, meant int8" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("steps, export, problem", [
    ([], dict(precision="int8"), "needs a quantize step"),
    ([dict(method="rtn", bits=4)], dict(precision="int8"), "makes 4-bit weights"),
    ([dict(method="rtn", bits=4, sym=False)], dict(precision="int4", opset=21), "symmetric"),
    ([dict(method="rtn", bits=8, group_size=64)], dict(precision="int8"), "per-channel"),
    ([dict(method="gptq", bits=4)], dict(precision="int4", opset=18), "opset: 21"),
    ([dict(method="gptq", bits=4)], dict(precision="int4", opset=21), None),
    ([dict(method="smoothquant")], dict(precision="int8"), None),
    ([], dict(precision="fp16"), None),
])
def test_plan_problems_before_any_model_loads(steps, export, problem):
    from compress.plan_state import PlanState
    from compress.quantization.config import QuantizeConfig
    from export.tensorrt import plan_check

    state = PlanState(train_data=True, eval_seq_len=128)  # shape unknown: the quantization alone decides
    for i, s in enumerate(steps):
        state, _ = QuantizeConfig(**s).check(PlanState(**{**state.__dict__, "at": f"steps[{i}].quantize"}))
    cfg = SimpleNamespace(**{"opset": 18, "profile": None, **export})
    found = [p.msg for p in plan_check(cfg, state)]
    assert (problem in " ".join(found)) if problem else found == []


def test_tensorrt_qdq_checks_each_weight_like_the_ort_pass(fp_graph):
    """The TensorRT Q/DQ goes through the same weight-replacement pass as MatMulNBits: codes of another
    model do not match the graph's weights, and the refusal leaves the graph as it was."""
    records = symmetric_records(tiny_model(seed=1), ["transformer.h.0.attn.c_attn"], 8)  # fp_graph is seed 0
    graph = onnx.ModelProto()
    graph.CopyFrom(fp_graph)
    with pytest.raises(UserError, match="transformer.h.0.attn.c_attn: graph weight of .* differs from the dequantized"):
        write_qdq(graph, records)
    assert graph == fp_graph
