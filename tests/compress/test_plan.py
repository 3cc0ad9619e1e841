import json
import textwrap

import pytest

from compress.errors import PlanError, UserError
from compress.source_config import PretrainModel
from compress.plan import load_plan, parse_plan
from compress.plan_locations import apply_override, format_loc

GOOD = """\
name: t
model:
  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, tokens: 5000}
data:
  train: {builtin: python-docs, max_chars: 50000}
  eval: {builtin: python-docs, split: heldout, seq_len: 32}
"""


def write(tmp_path, text, name="plan.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path, text, overrides=()):
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, text), overrides)
    return e.value.problems


pytestmark = pytest.mark.usefixtures("no_model_loads")  # plan validation loads no model (conftest)


def test_good_plan_loads_with_defaults(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    assert isinstance(plan.model, PretrainModel) and plan.model.pretrain.n_layer == 1
    assert plan.eval.latency.prompt == 128 and plan.steps == []


def test_unknown_key_names_path_and_line(tmp_path):
    p = problems(tmp_path, GOOD.replace("seq_len: 32}", "seq_len: 32, sequence: 9}"))
    assert p == ["data.eval.sequence: unknown key; did you mean 'seq_len'? (line 6)"]


def test_unknown_keys_get_a_did_you_mean_at_every_level(tmp_path):
    text = (GOOD.replace("n_layer: 1", "n_layr: 1").replace("seq_len: 32}", "seq_lenn: 32}")
            .replace("name: t", "name: t\ndevce: cpu") + "steps:\n  - prune: {mlpp: 0.5}\n")
    p = problems(tmp_path, text)
    assert "model.pretrain.n_layr: unknown key; did you mean 'n_layer'? (line 4)" in p
    assert any(x.startswith("data.eval.seq_lenn: unknown key; did you mean 'seq_len'?") for x in p), p
    assert any(x.startswith("devce: unknown key; did you mean 'device'?") for x in p), p
    assert any(x.startswith("steps[0].prune.mlpp: unknown key; did you mean 'mlp'?") for x in p), p
    assert any(x.startswith("eval.colour: unknown key (") for x in problems(tmp_path, GOOD + "eval: {colour: red}\n"))


def test_a_set_that_fails_validation_names_the_set_not_a_line(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD)
    with pytest.raises(PlanError) as e:
        load_plan(path, ["model.pretrain.n_layer=0", "data.eval.zzz=1"])
    assert sorted(e.value.problems) == sorted([
        "model.pretrain.n_layer: Input should be greater than or equal to 1 (got 0) (--set model.pretrain.n_layer=0)",
        "data.eval.zzz: unknown key (--set data.eval.zzz=1)"])


def test_wrong_type_and_out_of_range_are_all_reported(tmp_path):
    text = GOOD.replace("n_layer: 1", "n_layer: many").replace("seq_len: 32", "seq_len: 2")
    p = problems(tmp_path, text)
    assert len(p) == 2
    assert p[0].startswith("model.pretrain.n_layer: Input should be a valid integer") and "(line 3)" in p[0]
    assert p[1].startswith("data.eval.seq_len: Input should be greater than or equal to 8")


def test_unknown_step_suggests_nothing_or_the_close_match(tmp_path):
    p = problems(tmp_path, GOOD + "steps:\n  - prnue: {mlp: 0.5}\n")
    assert p[0].startswith("steps[0].prnue: unknown step") and "(line 8)" in p[0]
    p = problems(tmp_path, GOOD + "steps:\n  - [1, 2]\n")
    assert p[0].startswith("steps[0]: must be a mapping with exactly one key")


def test_missing_file(tmp_path):
    p = problems(tmp_path, GOOD.replace("{builtin: python-docs, split: heldout, seq_len: 32}",
                                        "{path: missing.txt, seq_len: 32}"))
    assert len(p) == 1 and p[0].startswith("data.eval.path: no such file or directory:")
    assert str(tmp_path / "missing.txt") in p[0]


def test_empty_eval_text(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    p = problems(tmp_path, GOOD.replace("{builtin: python-docs, split: heldout, seq_len: 32}",
                                        "{path: empty.txt, seq_len: 32}"))
    assert len(p) == 1 and "data.eval" in p[0] and "the text is empty" in p[0]


def test_model_dir_that_is_not_gpt2(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    text = GOOD.replace("model:\n  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, tokens: 5000}", "model: ./llama")
    p = problems(tmp_path, text)
    assert len(p) == 1 and p[0].startswith("model:") and "model_type is 'llama'" in p[0]


def test_missing_model_dir(tmp_path):
    text = GOOD.replace("model:\n  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, tokens: 5000}", "model: ./gone")
    assert "model directory does not exist" in problems(tmp_path, text)[0]


def test_invalid_yaml_reports_line(tmp_path):
    p = problems(tmp_path, "name: t\nmodel: [unclosed\ndata: {}\n")
    assert len(p) == 1 and p[0].startswith("invalid YAML (line") and "line 3" in p[0]


def test_plan_must_be_a_mapping(tmp_path):
    assert "must be a YAML mapping" in problems(tmp_path, "- just\n- a list\n")[0]


def test_cross_field_rules(tmp_path):
    p = problems(tmp_path, GOOD.replace("n_head: 2", "n_head: 3"))
    assert "n_embd (32) must be divisible by n_head (3)" in p[0]
    p = problems(tmp_path, GOOD.replace("split: heldout, seq_len: 32", "split: heldout, seq_len: 32, stride: 64"))
    assert "stride (64) must not exceed seq_len (32)" in p[0]


def test_set_overrides(tmp_path):
    plan = load_plan(write(tmp_path, GOOD), ["model.pretrain.n_layer=3", "eval.latency=null", "name=other"])
    assert plan.model.pretrain.n_layer == 3 and plan.eval.latency is None and plan.name == "other"
    p = problems(tmp_path, GOOD, ["steps.4.prune.mlp=0.3"])
    assert p[0].startswith("--set steps.4.prune.mlp=0.3:")
    assert "expected KEY.PATH=VALUE" in problems(tmp_path, GOOD, ["novalue"])[0]


def test_apply_override_into_lists():
    raw = {"steps": [{"prune": {"mlp": 0.5}}]}
    apply_override(raw, "steps.0.prune.mlp=0.25")
    assert raw["steps"][0]["prune"]["mlp"] == 0.25


def test_paths_resolve_against_the_plan_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.txt").write_text("some text " * 100)
    sub = tmp_path / "plans"
    sub.mkdir()
    text = GOOD.replace("{builtin: python-docs, split: heldout, seq_len: 32}", "{path: ../data/eval.txt, seq_len: 32}")
    plan = load_plan(write(sub, text))
    assert plan.data.eval.path == str(tmp_path / "data" / "eval.txt")


def test_format_loc():
    assert format_loc(("steps", 2, "quantize", "bits")) == "steps[2].quantize.bits"
    assert format_loc(("model", "pretrain", "pretrain", "n_layer")) == "model.pretrain.n_layer"
    assert format_loc(("model", "source")) == "model"


def test_parse_plan_from_dict_and_missing_file_message(tmp_path):
    with pytest.raises(PlanError, match="name: required key is missing"):
        parse_plan({"model": "gpt2", "data": {"eval": {"builtin": "python-docs"}}})
    with pytest.raises(UserError, match="plan file not found"):
        load_plan(tmp_path / "nope.yaml")


def test_eval_windows_longer_than_the_model_fail_at_plan_time(tmp_path):
    text = GOOD.replace("model:\n  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, tokens: 5000}", "model: gpt2")
    assert problems(tmp_path, text.replace("seq_len: 32}", "seq_len: 2048}")) == [
        "model: data.eval.seq_len (2048) exceeds the model's 1024 positions (line 2)"]


def test_a_tensorrt_profile_is_checked_against_the_model_and_the_plan(tmp_path):
    text = GOOD.replace("model:\n  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, tokens: 5000}", "model: gpt2")
    text += ("eval: {latency: {prompt: 64, new_tokens: 64}}\n"
             "steps:\n  - export: {format: tensorrt, profile: {past: [0, 16, 32]}}\n")
    (problem,) = problems(tmp_path, text)
    assert problem.startswith("steps[0].export.profile: profile.past max 32 < latency prompt + new_tokens - 1 (127)")


def test_unparsable_set_value_is_one_problem_of_the_plan(tmp_path):
    (tmp_path / "p.yaml").write_text("name: x\n")
    with pytest.raises(PlanError) as e:
        load_plan(tmp_path / "p.yaml", ["x=[1"])
    assert e.value.problems[0].startswith("--set x=[1: the value '[1' is not valid YAML")
