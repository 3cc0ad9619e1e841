"""The qat step in a plan: quantize -> qat, same layout on disk, stock loader, plan-time refusals."""

import json

import pytest
import torch

from compress.errors import PlanError
from compress.models import load_model
from compress.plan import parse_plan
from compress.quantization.modules import quant_linears
from compress.pipeline import run_plan

QAT = {"tokens": 64 * 8 * 8, "seq_len": 64, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "eval_tokens": 2048,
       "eval_every": 4}


def plan(tmp_path, model_dir, steps):
    from evalsuite.data import builtin_text

    (tmp_path / "train.txt").write_text(builtin_text("python-docs", "train")[:60_000])
    (tmp_path / "eval.txt").write_text(builtin_text("python-docs", "heldout")[:3_000])
    raw = {"name": "q", "model": str(model_dir),
           "data": {"train": {"path": "train.txt"}, "eval": {"path": "eval.txt", "seq_len": 64}},
           "eval": {"latency": None, "targets": [], "samples": None}, "steps": steps}
    return parse_plan(raw, base_dir=tmp_path)


def test_quantize_then_qat_keeps_the_layout_and_the_grid(tmp_path, trained_tiny):
    steps = [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}, {"qat": QAT}]
    result = run_plan(plan(tmp_path, trained_tiny[0], steps), tmp_path / "run", progress=False)
    ptq_dir, qat_dir = tmp_path / "run" / "01-quantize-rtn-w4g32" / "model", tmp_path / "run" / "02-qat" / "model"
    assert sorted(p.name for p in qat_dir.iterdir()) == sorted(p.name for p in ptq_dir.iterdir())
    config = lambda d: json.loads((d / "config.json").read_text())  # noqa: E731
    assert config(qat_dir) == config(ptq_dir)  # same quantization_config, same model
    ptq, qat = quant_linears(load_model(ptq_dir)), quant_linears(load_model(qat_dir))
    assert all(torch.equal(qat[n].zeros, ptq[n].zeros) and qat[n].scales.shape == ptq[n].scales.shape for n in ptq)
    assert any(not torch.equal(qat[n].scales, ptq[n].scales) for n in ptq)  # scales: learned (the default)
    assert any(not torch.equal(qat[n].q, ptq[n].q) for n in ptq)
    info = json.loads((tmp_path / "run" / "02-qat" / "step.json").read_text())["info"]
    assert info["precision"] == "fp32" and info["after"]["ppl"] < info["before"]["ppl"] and info["best_step"] > 0
    ppl = {row["step"]: row["ppl"] for row in result.metrics}
    assert ppl["02-qat"] < 1.01 * ppl["01-quantize-rtn-w4g32"]  # the plan's eval (3k chars of data.eval)


def test_the_qat_model_reads_with_the_stock_loader(tmp_path, trained_tiny):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed: pip install -e '.[dev]'")
    from transformers import AutoModelForCausalLM

    steps = [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}, {"qat": {**QAT, "tokens": 64 * 8 * 2}}]
    run_plan(plan(tmp_path, trained_tiny[0], steps), tmp_path / "run", progress=False)
    qat_dir = tmp_path / "run" / "02-qat" / "model"
    stock = AutoModelForCausalLM.from_pretrained(qat_dir, dtype=torch.float32, local_files_only=True).eval()
    ours = load_model(qat_dir)
    x = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(stock(input_ids=x).logits, ours(input_ids=x).logits, atol=1e-4)


@pytest.mark.parametrize("steps, message", [
    ([{"qat": QAT}], r"steps\[0\].qat: trains a quantized model: put it after a quantize step"),
    ([{"quantize": {"method": "dynamic-int8"}}, {"qat": QAT}], r"steps\[1\].qat: steps\[0\].quantize \(method "
                                                               r"dynamic-int8\) keeps no integer grid"),
    ([{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}, {"qat": {**QAT, "seq_len": 512}}],
     r"steps\[1\].qat.seq_len: 512 exceeds"),
])
def test_plan_time_refusals(tmp_path, trained_tiny, steps, message):
    with pytest.raises(PlanError, match=message):
        plan(tmp_path, trained_tiny[0], steps)


def test_qat_after_an_export_of_the_quantized_model_is_planned(tmp_path, trained_tiny):
    # an export leaves the model unchanged for the next step: qat still trains the quantize step's model
    steps = [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}, {"export": {"format": "onnx"}},
             {"qat": QAT}]
    assert [type(s).__name__ for s in plan(tmp_path, trained_tiny[0], steps).steps][-1] == "QatConfig"
