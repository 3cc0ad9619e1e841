"""The export step: its config checks (before any model loads) and a tiny plan run end to end."""

import json
import logging

import pytest
import torch

from compress.errors import PlanError, UserError
from compress.plan import parse_plan
from compress.pipeline import run_plan
from compress.catalog import step_configs
from export.step import ExportConfig, build_graph, export_step, fuses
from export.target import ExportTarget
from export.tensorrt import TensorRTExport


def plan_dict(model_dir, steps, max_tokens=300):
    return {"name": "t", "model": str(model_dir),
            "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": max_tokens}},
            "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0}, "targets": ["host"]},
            "steps": steps}


def test_defaults_and_slug():
    assert step_configs()["export"] is ExportTarget and ExportTarget.model_validate({}) == ExportConfig()
    cfg = ExportConfig()
    assert (cfg.format, cfg.opset, cfg.accuracy_level) == ("onnx", 18, 4) and not hasattr(cfg, "quantize")
    assert ExportConfig.model_validate({"kv_cache": True}) == cfg  # older plans' key: always on, dropped
    quantized = object()  # export.onnx_quant.graph_quantization of a quantized model
    assert fuses(cfg, None) and not fuses(cfg, quantized)
    assert fuses(ExportConfig(optimize=True), quantized) and not fuses(ExportConfig(optimize=False), None)
    assert cfg.slug() == "export-onnx" and TensorRTExport(format="tensorrt").slug() == "export-tensorrt"


@pytest.mark.parametrize("body,message", [
    ({"precision": "int8"}, "precision: only for format tensorrt"),
    ({"profile": {"batch": [1, 1, 2]}}, "profile: only for format tensorrt"),
    ({"format": "tensorrt", "quantize": "int4"}, "quantize: only for format onnx"),
    ({"format": "tensorrt", "optimize": False}, "optimize: only for format onnx"),
    ({"kv_cache": False}, "kv_cache: the export always has the KV cache"),
    ({"fp16": True, "quantize": "dynamic-int8"}, "exclude each other"),
    ({"opset": 9}, "greater than or equal to 14"),
    ({"quantize": "int3"}, "quantize: 'int3' is not an export option any more"),
    ({"quantize": "int4", "block_size": 48}, "quantize: int4 is now `- quantize: {method: ort-int4, group_size: 48}` "
                                             "before the export, which is refused: Input should be"),
    ({"validation": {"max_abs_logit": 0}}, "greater than 0"),
    ({"unknown": 1}, "unknown key"),
])
def test_bad_config_is_reported_at_its_key_path(tmp_path, trained_tiny, body, message):
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(trained_tiny[0], [{"export": body}]))
    assert "steps[0].export" in str(e.value) and message in str(e.value)


def test_tensorrt_fields_accepted_with_format_tensorrt(trained_tiny):
    profile = {"batch": [1, 1, 2], "prompt": [1, 64, 64], "past": [0, 32, 64]}  # every point fits the 128 positions
    plan = parse_plan(plan_dict(trained_tiny[0], [{"export": {"format": "tensorrt", "precision": "fp16",
                                                              "profile": profile}}]))
    assert plan.steps[0].precision == "fp16" and plan.steps[0].profile.batch == (1, 1, 2)
    with pytest.raises(PlanError, match=r"steps\[0\]\.export\.profile: profile.prompt max 512 exceeds the "
                                        r"model's 128 positions"):
        parse_plan(plan_dict(trained_tiny[0], [{"export": {"format": "tensorrt", "profile": {"batch": [1, 1, 2]}}}]))


def test_ort_quantizer_after_a_quantize_step_is_a_plan_problem(trained_tiny):
    if "quantize" not in step_configs():
        pytest.skip("the quantize step is not registered in this checkout")
    with pytest.raises(PlanError, match=r"steps\[1\]\.export\.quantize: the model is already quantized"):
        parse_plan(plan_dict(trained_tiny[0], [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}},
                                               {"export": {"quantize": "int4"}}]))
    with pytest.raises(PlanError, match=r"steps\[1\]\.export: the model quantized by steps\[0\]\.quantize \(method "
                                        r"ort-int4\) has no form the tensorrt export writes; use rtn/gptq/"):
        parse_plan(plan_dict(trained_tiny[0], [{"quantize": {"method": "ort-int4"}},
                                               {"export": {"format": "tensorrt", "precision": "fp16"}}]))


def test_export_step_in_a_plan(tmp_path, trained_tiny):
    """fp32 export in a run: artifacts, validation.json, metrics measured on ONNX Runtime."""
    plan = parse_plan(plan_dict(trained_tiny[0], [{"export": {"format": "onnx"}}]))
    result = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in result.records] == ["ran", "ran"]
    step = tmp_path / "run" / "01-export-onnx"
    for name in ("model.onnx", "io.json", "config.json", "tokenizer_config.json", "validation.json", "genai_config.json",
                 "DONE"):
        assert (step / name).is_file(), name
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["max_abs_logit_diff"] < 1e-3 and v["decode_max_abs_logit_diff"] < 1e-3
    assert v["top1_agreement"] == 1.0 and v["ppl_rel_diff"] < 1e-4
    # one perplexity per artifact: metrics.json's; validation.json has only a ratio on labelled windows
    assert {k for k in v if "ppl" in k} == {"ppl_ratio", "ppl_rel_diff", "ppl_windows"}
    assert v["ppl_windows"].startswith("first 300 eval tokens, windows of 64")
    m = json.loads((step / "metrics.json").read_text())
    base = json.loads((tmp_path / "run" / "00-base" / "metrics.json").read_text())
    assert (m["backend"], m["kind"]) == ("onnxruntime", "onnx")
    assert m["ppl"] == pytest.approx(base["ppl"], rel=1e-4) and m["tokens_per_s"] > 0
    info = json.loads((step / "step.json").read_text())
    assert info["artifact"] == "model.onnx" and info["info"]["passes"]["gemm_to_matmul"] == 8
    assert info["info"]["passes"]["fused"]["SkipLayerNormalization"] == 4
    assert info["info"]["passes"]["tied_embedding"] == "token lookup reads the head's weight (one fp table)"
    # the fused decode graph beside it, validated on its own file; the plan measured it (open_runner)
    d = v["decode_graph"]
    assert d["file"] == "model_decode.onnx" and d["passed"] and d["max_abs_logit_diff"] < 1e-4 and len(d["sha256"]) == 64
    assert json.loads((step / "io.json").read_text())["decode_graph"]["file"] == "model_decode.onnx"


def test_failed_validation_stops_the_step_with_the_numbers(tmp_path, trained_tiny):
    plan = parse_plan(plan_dict(trained_tiny[0], [
        {"quantize": {"method": "ort-int4", "group_size": 256}},
        {"export": {"validation": {"approx_ppl_rel": 1e-6, "tokens": 256}}}]))
    with pytest.raises(UserError, match=r"02-export-onnx: export validation failed: perplexity .* apart, limit 0\.0001%"):
        run_plan(plan, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "02-export-onnx").exists()  # a failed step never looks done
    v = json.loads((tmp_path / "run" / ".02-export-onnx.tmp" / "validation.json").read_text())
    assert v["reference"] == "torch fp32 (export is ort-int4 int4 g256)" and v["ppl_rel_diff"] > 1e-6 and not v["passed"]


def test_old_quantize_spelling_maps_to_the_method_with_a_note(tmp_path, trained_tiny, caplog):
    """`export: {quantize: int4, block_size: 32}` of older plans: a note naming the quantize step that says it now,
    the same plan state as that step would leave, the keys dumped back as written and the old step hash."""
    from compress.hashing import digest
    from compress.plan_check import check_steps
    from compress.step_inputs import StepInputs

    plan = parse_plan(plan_dict(trained_tiny[0], [{"export": {"quantize": "int4", "block_size": 32}},
                                                  {"export": {"format": "tensorrt", "precision": "fp16"}}]))
    assert check_steps(plan).notes == ["steps[0].export: quantize: int4 is now "
                                       "`- quantize: {method: ort-int4, group_size: 32}` before the export"]
    plan = parse_plan(plan_dict(trained_tiny[0], [{"export": {"quantize": "int4", "block_size": 32}}]))
    cfg = plan.steps[0]
    assert cfg.old_quantizer[0].method == "ort-int4" and cfg.old_quantizer[0].group_for(4) == 32
    assert {"quantize": "int4", "block_size": 32}.items() <= cfg.model_dump().items()
    assert ExportTarget.model_validate(cfg.model_dump()) == cfg
    inputs = StepInputs(declared=frozenset({"seed"}), _seed=0)
    old = {**ExportConfig.legacy_fields, **ExportConfig().model_dump(mode="json"), "quantize": "int4", "block_size": 32}
    old.pop("genai")
    assert cfg.content_hash("p", inputs) == digest("p", "export", old, inputs.key())
    with caplog.at_level(logging.WARNING):  # it runs: the method quantizes in memory, the graph pass follows
        run_plan(plan, tmp_path / "run", progress=False)
    assert "is now `- quantize: {method: ort-int4, group_size: 32}` before the export" in caplog.text
    info = json.loads((tmp_path / "run" / "01-export-onnx" / "step.json").read_text())
    assert info["info"]["passes"]["quantized_ops"]["MatMulNBits"] == 9 and info["info"]["validation"]["passed"]
    assert "ort-int4 int4 g32 by ONNX Runtime's quantizer" in info["summary"]


def test_quantize_then_export_writes_the_steps_integers(tmp_path, trained_tiny):
    if "quantize" not in step_configs():
        pytest.skip("the quantize step is not registered in this checkout")
    plan = parse_plan(plan_dict(trained_tiny[0], [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}},
                                                  {"export": {"format": "onnx", "accuracy_level": 0}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-onnx"
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["reference"].startswith("torch quantized model (int4")
    assert v["ppl_rel_diff"] < 1e-4 and v["max_abs_logit_diff"] < 1e-3  # the same integers, fp32 compute
    ops = json.loads((step / "step.json").read_text())["info"]["passes"]["from_quantize_step"]
    assert ops["MatMulNBits"] == 8
    # lm_head kept in fp32 (the default): still tied, so the lookup shares the head's table
    assert json.loads((step / "step.json").read_text())["info"]["passes"]["tied_embedding"].startswith("token lookup")


def test_handler_is_registered_for_the_config():
    from compress.catalog import handler_for

    assert handler_for(ExportConfig()) is export_step


def test_validation_limits_name_the_numbers():
    """validate() against a runner that is off by a constant: the logit limit trips, with numbers."""
    import torch

    from tests.tiny_models import tiny_model
    from evalsuite.runner import TorchRunner
    from export.validate import Limits, validate

    class Shifted(TorchRunner):
        def forward(self, ids, past=None):
            logits, past = super().forward(ids, past)
            return logits + 0.01 * torch.arange(logits.shape[-1]), past  # changes the ranking a little

    ref, test = TorchRunner(tiny_model()), Shifted(tiny_model())
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0))
    bad = validate(ref, test, ids, 64, 2, Limits(max_abs_logit=1e-3), "torch fp32")
    assert not bad.passed and bad.max_abs_logit_diff == pytest.approx(2.55, abs=1e-3)
    assert bad.problems[0].startswith("max |logit diff| 2.55") and "exceeds 0.001 vs torch fp32" in bad.problems[0]
    assert bad.ppl_rel_diff > 0 and bad.top1_agreement < 1
    ppl = validate(ref, test, ids, 64, 2, Limits(max_ppl_rel=1e-9), "torch fp32")
    assert not ppl.passed and "apart, limit 1e-07%" in ppl.problems[0]
    same = validate(ref, TorchRunner(tiny_model()), ids, 64, 2, Limits(max_abs_logit=1e-3, max_ppl_rel=0.01), "x")
    assert same.passed and same.as_dict()["passed"] and same.max_abs_logit_diff == 0


def test_the_graphs_of_one_export_share_one_torch_reference():
    """model.onnx and model_decode.onnx are validated against one measurement of the torch model."""
    import torch

    from evalsuite.runner import TorchRunner
    from export.validate import Limits, validate
    from tests.tiny_models import tiny_model

    class Counted(TorchRunner):
        calls = 0

        def forward(self, ids, past=None):
            Counted.calls += 1
            return super().forward(ids, past)

    ref = Counted(tiny_model())
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0))
    memo: dict = {}
    first = validate(ref, TorchRunner(tiny_model()), ids, 64, 2, Limits(max_abs_logit=1e-3), "torch fp32", memo)
    once = Counted.calls
    second = validate(ref, TorchRunner(tiny_model()), ids, 64, 2, Limits(max_abs_logit=1e-3), "torch fp32", memo)
    assert once > 0 and Counted.calls == once  # the second graph reused the torch side
    assert first.as_dict() == second.as_dict() and first.passed


@pytest.mark.parametrize("options, shared", [
    ({}, "token lookup reads the head's weight (one fp table)"),
    ({"fp16": True}, "token lookup reads the head's weight (one fp table)"),
    ({"method": "ort-int4", "group_size": 32}, "token lookup reads the head's int4 blocks (GatherBlockQuantized)"),
    ({"method": "ort-int8", "group_size": 32}, "token lookup reads the head's int8 blocks (GatherBlockQuantized)"),
    ({"method": "ort-dynamic-int8", "allow_outliers": True},
     "token lookup reads the head's int8 weight (DequantizeLinear)"),
    ({"method": "ort-int4"}, "stored twice: the head's form cannot be gathered"),  # block 128, K = 64
])
def test_build_graph_shares_the_tied_table_after_every_quantizer(options, shared, run_decoder):
    """The tie is found on the fp32 graph and the lookup rewritten after ORT's quantizers ran (methods whose
    layout the export applies: the quantize step leaves the weights, the graph pass reads its OnnxForm)."""
    import numpy as np

    from compress.quantization import QuantizeConfig, quantize
    from tests.tiny_models import tiny_model

    model = tiny_model(seed=2)
    if "method" in options:
        model = quantize(model, QuantizeConfig(**options))
    graph, done = build_graph(ExportConfig(fp16="fp16" in options), model, {}, logging.getLogger("test"))
    assert done["tied_embedding"] == shared
    tables = [t for t in graph.graph.initializer if t.name == "transformer.wte.weight"]
    assert len(tables) == (1 if shared.startswith("stored twice") else 0)
    assert all(np.isfinite(out).all() for out in run_decoder(graph, past=2))  # loads and runs in ORT


def test_a_quantize_step_int4_head_is_stored_once(tmp_path, run_decoder):
    from compress.models import load_model, save_model
    from tests.tiny_models import tiny_model
    from compress.quantization import QuantizeConfig, quantize, quantized_linears
    from evalsuite.runner import TorchRunner
    from export.ort_runner import OrtRunner
    from export.onnx import save_onnx

    cfg = QuantizeConfig(method="rtn", bits=4, group_size=32, sym=False, lm_head="int4")
    path = save_model(quantize(tiny_model(seed=2), cfg), tmp_path / "q")
    qmodel = load_model(path)
    graph, done = build_graph(ExportConfig(accuracy_level=0), qmodel, quantized_linears(path),
                              logging.getLogger("test"))
    # the step's int4 codes for the head, with zero points, read by the lookup too
    assert done["tied_embedding"] == "token lookup reads the head's int4 blocks (GatherBlockQuantized)"
    assert done["from_quantize_step"]["MatMulNBits"] == 9
    assert not any(t.name == "transformer.wte.weight" for t in graph.graph.initializer)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    ort_logits, _ = OrtRunner(save_onnx(graph, tmp_path / "model.onnx")).forward(ids)
    torch_logits, _ = TorchRunner(qmodel).forward(ids)
    torch.testing.assert_close(ort_logits, torch_logits, atol=1e-4, rtol=0)


def test_tensorrt_int8_validates_the_qdq_file_it_ships(tmp_path, trained_tiny):
    """The Q/DQ graph is written before model.onnx is saved: validation.json (ONNX Runtime on CPU) is
    measured on that very file, the one engine.json points TensorRT at."""
    if "quantize" not in step_configs():
        pytest.skip("the quantize step is not registered in this checkout")
    import onnx

    from export.trt_runner import unavailable_reason
    from export.trt_spec import sha256

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine would be built (see test_tensorrt_gpu.py)")
    plan = parse_plan(plan_dict(trained_tiny[0], [
        {"quantize": {"method": "rtn", "bits": 8, "group_size": "per-channel"}},
        {"export": {"format": "tensorrt", "precision": "int8", "validation": {"tokens": 256, "windows": 1}}}]))
    run_plan(plan, tmp_path / "run", progress=False)
    step = tmp_path / "run" / "02-export-tensorrt"
    v = json.loads((step / "validation.json").read_text())
    spec = json.loads((step / "engine.json").read_text())
    assert v["ran"] and v["passed"] and v["file"] == "model.onnx" and v["runtime"] == "onnxruntime on cpu"
    assert v["sha256"] == sha256(step / "model.onnx") == spec["onnx_sha256"]
    assert v["reference"].startswith("torch quantized model (int8") and v["ppl_rel_diff"] < 1e-3
    assert "ppl_onnx" not in v and "ppl_torch" not in v and "first 256 eval tokens" in v["ppl_windows"]
    ops = [n.op_type for n in onnx.load(step / "model.onnx").graph.node]
    assert ops.count("DequantizeLinear") == 8 and "MatMulNBits" not in ops  # the Q/DQ graph was validated
    info = json.loads((step / "step.json").read_text())
    assert info["info"]["qdq_layers"] == {"int8": 8}
    assert "% apart on the validation windows" in info["summary"]  # a closeness, not a second perplexity
    # not runnable here, yet projected from the bytes a decode step reads: the embedding tables it only
    # looks up (recorded by the writer) are left out, as a runner that opens the file would leave them out
    from export.ort_session import gathered_bytes

    tables = gathered_bytes(step / "model.onnx")
    m = json.loads((step / "metrics.json").read_text())
    assert tables > 0 and info["info"]["gathered_weight_bytes"] == tables
    assert m["read_bytes_per_token"] == m["weight_bytes"] - tables


def test_a_tensorrt_graph_ort_cannot_run_is_recorded_as_not_validated(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import export.onnx_target as step_module
    from export.step import validate_file

    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read: the runner below refuses it")

    def refuse(cfg, onnx_path, ctx):
        raise UserError(f"{onnx_path}: ONNX Runtime cannot load this model (TensorRT-only op)")

    monkeypatch.setattr(step_module, "_validation_runner", refuse)
    ctx = SimpleNamespace(name="02-export-tensorrt")
    v = validate_file(TensorRTExport(format="tensorrt", precision="fp16"), path, None, {}, ctx)
    assert (v["ran"], v["passed"], v["file"]) == (False, None, "model.onnx")
    assert v["reason"].startswith("ONNX Runtime cannot run this TensorRT graph") and "TensorRT-only op" in v["reason"]
    with pytest.raises(UserError, match="cannot load"):  # an ONNX Runtime export that ORT cannot load fails
        validate_file(ExportConfig(), path, None, {}, ctx)


def test_old_plans_keep_their_step_hashes():
    """The onnx and tensorrt targets are two classes now; their hashes are those of the one ExportConfig
    of before (its dump had every field of both), so existing run directories are reused."""
    from compress.hashing import digest
    from compress.step_inputs import StepInputs

    inputs = StepInputs(declared=frozenset({"seed"}), _seed=0)
    validation = ExportConfig().validation.model_dump(mode="json")
    old = {"format": "onnx", "opset": 18, "optimize": None, "fp16": False, "quantize": "none", "block_size": 128,
           "accuracy_level": 4, "validation": validation, "smooth": None, "allow_outliers": False,
           "precision": None, "profile": None}
    assert ExportConfig().content_hash("p", inputs) == digest("p", "export", old, inputs.key())
    trt = {**old, "format": "tensorrt", "precision": "int8"}
    assert TensorRTExport(format="tensorrt", precision="int8").content_hash("p", inputs) == \
        digest("p", "export", trt, inputs.key())
    assert ExportConfig(genai=False).content_hash("p", inputs) != ExportConfig().content_hash("p", inputs)


def test_every_export_target_declares_the_runtime_that_runs_its_artifact():
    """The report's "what to ship" per device reads these facts, never a format name."""
    from evalsuite.deployment import Runtime
    from evalsuite.hardware import CPU, NVIDIA_GPU
    from export.step import targets

    declared = {fmt: cls.runtime for fmt, cls in targets().items()}
    assert declared and all(isinstance(r, Runtime) and r.runs_on and r.deploys for r in declared.values())
    assert all(set(r.runs_on) <= {CPU, NVIDIA_GPU} for r in declared.values())
    trt = declared["tensorrt"]
    assert trt.runs_on == (NVIDIA_GPU,) and "built on the device" in trt.unmeasured_reason
