"""Plan-time errors of the prune step, reported with their key paths before any model loads."""

import pytest

from compress import PruneConfig
from compress.errors import PlanError
from compress.models import save_model
from compress.plan import parse_plan
from tests.tiny_models import tiny_model


def plan_dict(*steps, model=None):
    return {"name": "t", "model": model or {"pretrain": {"n_layer": 4, "n_embd": 64, "n_head": 4}},
            "data": {"train": {"builtin": "python-docs"},
                     "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64}},
            "steps": [{"prune": s} for s in steps]}


def problems(*steps, model=None):
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(*steps, model=model))
    return e.value.problems


def test_a_valid_plan_parses():
    plan = parse_plan(plan_dict({"importance": "taylor", "layers": 1, "mlp": 0.5, "width": 0.25}, {"params": 0.5}))
    assert plan.steps[0] == PruneConfig(importance="taylor", layers=1, mlp=0.5, width=0.25)
    assert plan.steps[1].params == 0.5 and plan.steps[1].importance == "activation"


@pytest.mark.parametrize("step, expected", [
    ({"width": 0.9}, "steps[0].prune: width=0.9 leaves 0 of 4 attention heads"),
    ({"layers": 4}, "steps[0].prune: layers=4 removes all 4 blocks of the 4x64 model (at most 3)"),
    ({"mlp": 1.0}, "steps[0].prune.mlp: Input should be less than 1"),
    ({"width": -0.1}, "steps[0].prune.width: Input should be greater than or equal to 0"),
    ({"params": 0.5, "mlp": 0.2}, "steps[0].prune: params is exclusive with mlp and width"),
    ({"params": 0}, "steps[0].prune.params: Input should be greater than 0"),
    ({"importance": "l1"}, "steps[0].prune.importance: Input should be 'magnitude', 'taylor', 'activation' or"),
    ({"heads": 2}, "steps[0].prune.heads: unknown key"),
    ({"seq_len": 512}, "steps[0].prune: seq_len=512 exceeds the model's 256 positions"),
])
def test_bad_targets_name_their_key_path(step, expected):
    found = problems(step)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_earlier_prune_steps_are_accounted_for():
    found = problems({"layers": 2, "width": 0.5}, {"layers": 1}, {"width": 0.75})
    assert found == ["steps[2].prune: width=0.75 leaves 0 of 2 attention heads (keep at least one: width < 0.75)"]
    assert problems({"layers": 2}, {"layers": 2})[0].startswith("steps[1].prune: layers=2 removes all 2 blocks")


def test_a_local_model_dir_is_read_for_its_shape(tmp_path, byte_tokenizer):
    save_model(tiny_model(n_layer=2, n_head=4, vocab_size=len(byte_tokenizer)), tmp_path / "m", byte_tokenizer)
    found = problems({"layers": 2}, model=str(tmp_path / "m"))
    assert found[0].startswith("steps[0].prune: layers=2 removes all 2 blocks of the 2x64 model")
    assert problems({"params": 0.01}, model=str(tmp_path / "m"))[0].startswith(
        "steps[0].prune: params=0.01 is below the smallest model")


def test_a_gpt2_hub_id_is_checked_offline_and_another_when_loaded():
    # the GPT-2 family's configs are carried by the package: no download at plan time
    assert problems({"layers": 40}, model="gpt2") == [
        "steps[0].prune: layers=40 removes all 12 blocks of the 12x768 model (at most 11)"]
    assert problems({"layers": 30}, model="openai-community/gpt2-medium")[0].startswith(
        "steps[0].prune: layers=30 removes all 24 blocks of the 24x1024 model")
    plan = parse_plan(plan_dict({"layers": 40}, model="someone/gpt2-finetune"))  # unknown: checked when loaded
    assert plan.steps[0].layers == 40


@pytest.mark.parametrize("target", [{"params": 0.6, "round_to": 32}, {"width": 0.3, "mlp": 0.37, "layers": 1},
                                    {"width": 0.5, "mlp": 0.3, "round_to": {"n_inner": 32, "n_embd": 32}},
                                    {"params": 0.6, "round_to": {"n_embd": 64}}])
def test_the_plan_time_shape_is_the_shape_the_step_makes(tmp_path, target, byte_tokenizer):
    from compress import prune
    from compress.model_shape import Shape
    from compress.plan_check import check_steps

    model = tiny_model(vocab_size=300, n_layer=3, n_embd=96, n_head=6)
    save_model(model, tmp_path / "m", byte_tokenizer)
    plan = parse_plan(plan_dict({"importance": "magnitude", "correct_layernorm": False, **target},
                                model=str(tmp_path / "m")))
    planned = check_steps(plan).states[-1].shape
    pruned = prune(model, plan.steps[0], None)
    assert planned == Shape.of_config(pruned.config)
    r = plan.steps[0].rounding  # the widths the step cut are multiples of round_to
    assert pruned.config.n_inner % r.n_inner == 0 and pruned.config.n_embd % r.n_embd == 0
    assert pruned.config.n_embd < 96 and pruned.transformer.h[0].attn.c_attn.weight.shape[0] == pruned.config.n_embd


def test_a_params_budget_on_a_vocabulary_still_to_be_trained_waits_for_the_run():
    from compress.plan_check import check_steps

    checks = check_steps(parse_plan(plan_dict({"params": 0.5})))
    assert checks.states[-1].shape is None and "vocabulary size" in checks.notes[0]
