"""An AWQ model exports like rtn/gptq: its integers become MatMulNBits (ONNX Runtime) and int4 Q/DQ
(TensorRT), and both graphs compute what the torch quantized model computes."""

import json

import numpy as np
import onnx
import pytest
import torch

from compress.models import load_model
from compress.plan import parse_plan
from compress.quantization import quantized_linears
from compress.pipeline import run_plan


@pytest.fixture(scope="module")
def awq_run(trained_tiny, tmp_path_factory):
    """quantize: awq int4 g32 -> export onnx and export tensorrt int4, in one plan."""
    out = tmp_path_factory.mktemp("awq_run")
    plan = parse_plan({
        "name": "awq", "model": str(trained_tiny[0]),
        "data": {"train": {"builtin": "python-docs", "max_chars": 100_000},
                 "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 300}},
        "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0}, "targets": ["host"]},
        "steps": [{"quantize": {"method": "awq", "bits": 4, "group_size": 32, "calib_samples": 8, "calib_seq_len": 64}},
                  {"export": {"format": "onnx", "accuracy_level": 0}},
                  {"export": {"format": "tensorrt", "precision": "int4", "opset": 21}}]})
    result = run_plan(plan, out, progress=False)
    assert [r.status for r in result.records] == ["ran"] * 4
    return out


def _step(run, prefix):
    (step,) = [d for d in run.iterdir() if d.name.startswith(prefix)]
    return step


def test_awq_exports_to_matmulnbits_and_matches_torch(awq_run):
    step = _step(awq_run, "02-export-onnx")
    info = json.loads((step / "step.json").read_text())["info"]
    assert info["passes"]["from_quantize_step"]["MatMulNBits"] == 8
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["reference"].startswith("torch quantized model (int4")
    assert v["ppl_rel_diff"] < 1e-4 and v["max_abs_logit_diff"] < 1e-3  # the same integers, fp32 compute


def test_awq_exports_to_tensorrt_int4_qdq_and_matches_torch(awq_run, trained_tiny, prefill_logits):
    qdir = _step(awq_run, "01-quantize-awq") / "model"
    step = _step(awq_run, "03-export-tensorrt")
    assert json.loads((step / "step.json").read_text())["info"]["qdq_layers"] == {"int4": 8}
    graph = onnx.load(str(step / "model.onnx"))
    dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 8 and all({a.name: a.i for a in n.attribute}["block_size"] == 32 for n in dq)

    ids = np.random.default_rng(0).integers(0, 260, (2, 24))
    got = torch.from_numpy(prefill_logits(step / "model.onnx", ids))
    with torch.no_grad():
        want = load_model(qdir)(torch.from_numpy(ids)).logits
        fp32 = load_model(trained_tiny[0])(torch.from_numpy(ids)).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got - fp32).abs().max() > 1e-2  # the int4 codes are what ran, not the fp32 weights
    assert set(quantized_linears(qdir)) == {f"transformer.h.{i}.{n}" for i in range(2)
                                           for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
