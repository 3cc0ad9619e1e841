"""The outlier check inside a plan: refused with one line naming the step, not DONE; allowed and recorded."""

import json

import pytest
import yaml

from compress.errors import UserError
from compress.models import save_model
from compress.plan import load_plan
from compress.plan_state import PlanState
from compress.quantization import QuantizeConfig
from compress.pipeline import run_plan
from evalsuite.outliers import plant_outliers
from tests.tiny_models import tiny_model

TEXT = "The quick brown fox jumps over the lazy dog, and then it rests by the river.\n\n" * 60


def _plan(tmp_path, byte_tokenizer, quantize: dict, name: str) -> object:
    model_dir = tmp_path / "planted"
    if not model_dir.exists():
        model = plant_outliers(tiny_model(vocab_size=len(byte_tokenizer), n_positions=64), [3, 17, 40, 59], 40.0)
        save_model(model, model_dir, byte_tokenizer)
        (tmp_path / "text.txt").write_text(TEXT)
    plan = tmp_path / f"{name}.yaml"
    plan.write_text(yaml.safe_dump({
        "name": name, "model": str(model_dir),
        "data": {"train": {"path": str(tmp_path / "text.txt")},
                 "eval": {"path": str(tmp_path / "text.txt"), "seq_len": 32, "max_tokens": 256}},
        "eval": {"latency": {"prompt": 4, "new_tokens": 2, "repeats": 1, "warmup": 0}, "targets": ["host"]},
        "steps": [{"quantize": {"method": "dynamic-int8", "calib_samples": 4, "calib_seq_len": 32, **quantize}}]}))
    return load_plan(plan)


def test_refused_in_a_plan_then_allowed(tmp_path, byte_tokenizer):
    with pytest.raises(UserError) as e:
        run_plan(_plan(tmp_path, byte_tokenizer, {}, "refused"), tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("steps[0].quantize: method dynamic-int8 quantizes activations per tensor")
    assert "input: max/median" in msg and "steps[0].quantize.allow_outliers: true" in msg
    assert not list((tmp_path / "run").glob("01-*/DONE"))  # the step is not marked done

    run_plan(_plan(tmp_path, byte_tokenizer, {"allow_outliers": True}, "allowed"), tmp_path / "run2", progress=False)
    (step_dir,) = (tmp_path / "run2").glob("01-quantize-dynamic-int8*")
    assert (step_dir / "DONE").exists()
    info = json.loads((step_dir / "step.json").read_text())["info"]
    assert info["outliers"]["max_over_median"]["h.0.mlp.c_fc"] > info["outliers"]["limit"]
    assert "worst activation outlier: h." in (tmp_path / "run2" / "report.md").read_text()


def test_plan_without_training_text_needs_allow_outliers():
    state = PlanState(train_data=False, eval_seq_len=None, at="steps[0].quantize")

    def problems(**kw):
        return [p.msg for p in QuantizeConfig(method="dynamic-int8", **kw).check(state)[1]]

    assert problems() == ["dynamic-int8 measures activation outliers (and smooths) on data.train; set "
                          "data.train in the plan, or allow_outliers: true without smooth"]
    assert problems(allow_outliers=True) == []
    assert problems(smooth=0.5, allow_outliers=True) == problems()
