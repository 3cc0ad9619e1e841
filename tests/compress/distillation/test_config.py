"""Bad distill entries fail at plan time, before any model loads, with their key paths."""

import pytest

from compress.distillation import DistillConfig
from compress.errors import PlanError
from compress.plan import parse_plan


def plan(*steps, model=None, train=True):
    data = {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32}}
    if train:
        data["train"] = {"builtin": "python-docs"}
    return {"name": "t", "model": model or {"pretrain": {"n_layer": 2, "n_embd": 32, "n_head": 2}},
            "data": data, "steps": list(steps)}


def problems(raw) -> list[str]:
    with pytest.raises(PlanError) as e:
        parse_plan(raw)
    return e.value.problems


pytestmark = pytest.mark.usefixtures("no_model_loads")  # plan validation loads no model (conftest)


def test_the_issue_example_parses_with_defaults():
    p = parse_plan(plan({"distill": {"teacher": "base", "tokens": 2_000_000, "temperature": 2.0,
                                     "loss": {"kl": 1.0, "ce": 0.1, "hidden": 0.1}, "lr": 3.0e-4,
                                     "batch_tokens": 16384}}))
    step = p.steps[0]
    assert isinstance(step, DistillConfig) and step.teacher == "base" and step.loss.hidden == 0.1
    assert step.micro_batch() == 16384 // 256 and step.micro_batch(world_size=4) == 16
    assert step.describe().startswith("distill from base: 2,000,000 tokens")


def test_out_of_range_and_unknown_keys_name_their_paths():
    p = problems(plan({"distill": {"temperature": 0, "loss": {"kl": -1, "kld": 1}, "lr": 5,
                                   "amp": "fp8"}}))
    assert "steps[0].distill.temperature: Input should be greater than or equal to 0.1 (got 0)" in p
    assert any(x.startswith("steps[0].distill.loss.kl: Input should be greater than or equal to 0") for x in p)
    assert "steps[0].distill.loss.kld: unknown key; did you mean 'kl'?" in p
    assert any(x.startswith("steps[0].distill.lr: Input should be less than or equal to 1") for x in p)
    assert any(x.startswith("steps[0].distill.amp: Input should be 'auto', 'bf16', 'fp16' or 'off'") for x in p)


def test_inconsistent_settings_are_reported_at_the_step():
    assert problems(plan({"distill": {"loss": {"kl": 0}}})) == [
        "steps[0].distill.loss: at least one of kl, ce, hidden must be > 0"]
    assert problems(plan({"distill": {"batch_tokens": 4096, "batch_size": 8}})) == [
        "steps[0].distill: give batch_tokens or batch_size, not both"]
    assert problems(plan({"distill": {"eval_tokens": 0, "patience": 3}})) == [
        "steps[0].distill: patience needs held-out evaluation (eval_tokens > 0)"]
    assert problems(plan({"distill": {"student": {"n_layer": 2, "layers": [0, 1]}}})) == [
        "steps[0].distill.student: give exactly one of n_layer, layers"]
    assert problems(plan({"distill": {"student": {"layers": [3, 1]}}})) == [
        "steps[0].distill.student: layers must be increasing and distinct"]
    assert problems(plan({"distill": {"student": {"n_layer": 2}, "loss": {"hidden": 1.0},
                                      "hidden_layers": [1, 2, 3]}})) == [
        "steps[0].distill: hidden_layers has 3 entries for a 2-block student"]


def test_plan_level_problems_need_the_whole_plan(tmp_path):
    assert problems(plan({"distill": {}}, model=str(tmp_path / "nope"), train=False))  # bad model too
    p = problems(plan({"distill": {"seq_len": 512}}))
    assert p == ["steps[0].distill.seq_len: 512 exceeds the student's 256 positions"]


def test_a_student_from_teacher_blocks_is_checked_against_the_teacher_shape():
    # the base is 2 blocks of n_inner 128 (4 * 32)
    assert problems(plan({"distill": {"student": {"n_layer": 3}}})) == [
        "steps[0].distill.student.n_layer: 3 exceeds the teacher's 2 blocks"]
    assert problems(plan({"distill": {"student": {"layers": [0, 2]}}})) == [
        "steps[0].distill.student.layers: teacher has 2 blocks (0..1)"]
    assert problems(plan({"distill": {"student": {"n_layer": 1, "n_inner": 256}}})) == [
        "steps[0].distill.student.n_inner: 256 exceeds the teacher's MLP width 128"]
    # the student's shape flows on: a 1-block student of n_inner 96, and groups of 64 do not divide 96
    p = problems(plan({"distill": {"student": {"n_layer": 1, "n_inner": 96}}},
                      {"quantize": {"method": "rtn", "bits": 4, "group_size": 64}}))
    assert p == ["steps[1].quantize.group_size: 64 does not divide n_embd 32 (input of attn.c_attn, attn.c_proj, "
                 "mlp.c_fc) made by the teacher base (2x32); group_size 32 divides it",
                 "steps[1].quantize.group_size: 64 does not divide n_inner 96 (input of mlp.c_proj) made by "
                 "steps[0].distill (student from base blocks); group_size 32 divides it"]


def test_distilling_a_quantized_model_is_refused():
    p = problems(plan({"quantize": {"method": "rtn", "bits": 8}}, {"distill": {}}))
    assert p == ["steps[1].distill: distill trains a full-precision student: move it before steps[0].quantize, "
                 "or build the student from the teacher (student:)"]


def test_teacher_path_is_resolved_against_the_plan_and_checked(tmp_path):
    p = problems(plan({"distill": {"teacher": "./missing-teacher"}}))
    assert len(p) == 1 and p[0].startswith("steps[0].distill.teacher:") and "missing-teacher" in p[0]
