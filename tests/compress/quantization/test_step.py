"""The quantize step inside a plan: packed weights on disk, reloaded and evaluated by the runner."""

import json

import pytest
import yaml

from compress.plan import load_plan
from compress.quantization import is_quantized_dir, quantized_linears
from compress.pipeline import run_plan


@pytest.mark.slow
def test_plan_with_gptq_step(trained_tiny, tmp_path):
    model_dir, _ = trained_tiny
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({
        "name": "q", "model": str(model_dir),
        "data": {"train": {"builtin": "python-docs", "max_chars": 100_000},
                 "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 2048}},
        "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0}},
        "steps": [{"quantize": {"method": "gptq", "bits": 4, "group_size": 32, "calib_samples": 8,
                                "calib_seq_len": 64, "lm_head": "int8"}}],
    }))
    result = run_plan(load_plan(plan_file), tmp_path / "run", progress=False)
    step_dir = tmp_path / "run" / "01-quantize-gptq-w4g32"
    assert is_quantized_dir(step_dir / "model")
    assert set(quantized_linears(step_dir / "model")) >= {"lm_head", "transformer.h.1.mlp.c_proj"}
    base, quant = result.metrics
    assert quant["bytes_on_disk"] < base["bytes_on_disk"] / 2
    assert 0.9 < quant["ppl_ratio_to_base"] < 1.3  # 4-bit can even help a tiny model a little
    info = json.loads((step_dir / "step.json").read_text())["info"]
    assert info["bits"] == 4 and info["bytes_after"] < info["bytes_before"]
