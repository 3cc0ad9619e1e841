"""The real consumers read every ONNX export variant the export step writes: onnx.checker's full check
accepts each graph, and optimum's ORTModelForCausalLM loads each step directory (model.onnx +
config.json) and generates the same greedy tokens as export.ort_runner.

Variants: fp32 (the tied table shared as a plain Gather), fp16, ONNX Runtime's int4 / int8
MatMulNBits (tied table read by GatherBlockQuantized), dynamic int8 (tied table read through
DequantizeLinear), the quantize step's own integers as MatMulNBits int4 (head quantized too, with zero
points) and int8, W8A8 Q/DQ (the hand-off smoothquant writes: int8 per-channel weights and a
per-tensor activation scale; here the rtn int8 codes with a scale, so the variants share a trace),
and the TensorRT Q/DQ graphs (int8, int4 at opset 21).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import onnx
import pytest
import torch

from compress.models import load_model, save_model
from compress.quantization import QuantizeConfig, quantize
from export.generate import GenerationConfig, generate
from export.onnx import save_onnx
from export.ort_runner import OrtRunner
from export.step import ExportTarget, build_graph
from export.target import quantized_records

# name: (export options, quantize step before it or None, ops the graph must hold)
VARIANTS = {
    "fp32": ({}, None, {"SkipLayerNormalization"}),
    "fp16": ({"fp16": True}, None, {"Cast"}),
    "ort-int4": ({}, dict(method="ort-int4", group_size=32), {"MatMulNBits", "GatherBlockQuantized"}),
    "ort-int8": ({}, dict(method="ort-int8", group_size=32), {"MatMulNBits", "GatherBlockQuantized"}),
    "dynamic-int8": ({}, dict(method="ort-dynamic-int8", allow_outliers=True), {"MatMulInteger", "DequantizeLinear"}),
    "step-int4-head": ({"accuracy_level": 0}, dict(method="rtn", bits=4, group_size=32, sym=False, lm_head="int4"),
                       {"MatMulNBits", "GatherBlockQuantized"}),
    "step-int8": ({}, dict(method="rtn", bits=8), {"MatMulNBits"}),
    "step-w8a8": ({}, dict(method="rtn", bits=8), {"QuantizeLinear"}),  # + input_scale, below
    "tensorrt-int8": ({"format": "tensorrt", "precision": "int8"}, dict(method="rtn", bits=8), {"DequantizeLinear"}),
    "tensorrt-int4": ({"format": "tensorrt", "precision": "int4", "opset": 21},
                      dict(method="rtn", bits=4, group_size=64), {"DequantizeLinear"}),
}


@pytest.fixture(scope="module")
def step_dirs(trained_tiny, tmp_path_factory):
    """One step-like directory per variant, built by the export step's own build_graph."""
    import export.onnx as export_onnx

    model_dir, held = trained_tiny
    traces: dict = {}
    trace = export_onnx.export_decoder

    def trace_once(model, opset):
        # The trace is deterministic; variants of one set of weights share it, to keep this test fast.
        key = (opset, tuple(float(p.detach().double().sum()) for p in model.parameters()))
        if key not in traces:
            traces[key] = trace(model, opset)
        out = onnx.ModelProto()
        out.CopyFrom(traces[key])
        return out

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_onnx, "export_decoder", trace_once)
        for name, (options, quant, _) in VARIANTS.items():
            src = model_dir
            if quant is not None:
                src = tmp_path_factory.mktemp(f"{name}-quantized")
                save_model(quantize(load_model(model_dir), QuantizeConfig(**quant), held[:2000]), src)
            records = quantized_records(src)  # {} where the method is applied in the graph (ort-*)
            if name == "step-w8a8":
                records = {n: replace(r, input_scale=0.05) for n, r in records.items()}
            graph, _ = build_graph(ExportTarget.model_validate(options), load_model(src), records, logging.getLogger("test"))
            step = tmp_path_factory.mktemp(name)
            save_onnx(graph, step / "model.onnx")
            (step / "config.json").write_text((src / "config.json").read_text())
            out[name] = step
    return out, held


@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnx_checker_accepts_the_graph(step_dirs, name):
    dirs, _ = step_dirs
    path = dirs[name] / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)  # by path: external data is read from beside it
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert VARIANTS[name][2] <= ops


@pytest.mark.parametrize("name", list(VARIANTS))
def test_optimum_generates_what_our_runner_generates(step_dirs, name):
    from optimum.onnxruntime import ORTModelForCausalLM

    dirs, held = step_dirs
    prompt = held[:12].tolist()
    ours = OrtRunner(dirs[name] / "model.onnx")
    eos = int(load_config(dirs[name])["eos_token_id"])
    want = generate(ours, prompt, GenerationConfig(max_new_tokens=16, eos_token_id=eos))
    model = ORTModelForCausalLM.from_pretrained(dirs[name])  # reads model.onnx and config.json
    ids = torch.tensor([prompt])
    got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                         pad_token_id=eos, eos_token_id=eos)
    assert got[0, len(prompt):].tolist() == want
    assert len(set(want)) > 1  # a trained model: not one token repeated


def load_config(step) -> dict:
    import json

    return json.loads((step / "config.json").read_text())
