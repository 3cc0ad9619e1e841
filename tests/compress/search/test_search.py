"""The budget-driven search on a random tiny GPT-2 (2 x 64): budgets, prefix sharing, exit 2, resume."""

from __future__ import annotations

import pytest
import yaml

from compress import run as run_cli
from compress.errors import PlanError
from compress.pipeline import run_plan
from compress.plan import load_plan
from compress.search import run as search_run
from compress.search.report import SearchBudgetError
from compress.search.run import run_search
from tests.conftest import text_plan

SPACE = {"prune": {"width": [0.5], "importance": "magnitude"},  # one pruned shape: 2 heads, n_embd 32
         "distill": {"tokens": 1024, "seq_len": 32, "batch_tokens": 256},
         "quantize": {"methods": ["rtn"], "bits": [4, 8], "group_sizes": [32], "lm_head": ["int8", "keep"],
                      "mixed": False},
         "export": "none"}


def search_plan(tmp_path, model, budget, max_trials=3, **search):
    body = text_plan(model, [])
    body.pop("steps")
    body["search"] = {"target": "orin-nano", "budget": budget, "space": SPACE, "max_trials": max_trials,
                      "profile": {"windows": 2, "seq_len": 32}, **search}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_winner_within_budget_and_one_distillation_for_every_variant(tmp_path, random_tiny_dir):
    plan = load_plan(search_plan(tmp_path, random_tiny_dir, {"max_mb": 0.5}))
    result = run_search(plan, tmp_path / "out", progress=False)
    assert len(result.trials) == 3 and all(t["mb"] <= 0.5 for t in result.trials if t is result.winner)
    assert result.winner["mb"] <= 0.5
    kinds = [k for t in result.trials for k in t["ran_kinds"]]
    assert kinds.count("distill") == 1 and kinds.count("prune") == 1  # shared by the 3 quantize variants
    assert kinds.count("quantize") == 3
    for name in ("trials.json", "trials.csv", "pareto.md", "pareto.png", "best.plan.yaml", "search.json"):
        assert (tmp_path / "out" / name).exists(), name
    assert "Winner:" in (tmp_path / "out" / "pareto.md").read_text()
    again = run_plan(load_plan(result.best_plan), tmp_path / "out" / "trials" / result.winner["id"], progress=False)
    assert {r.status for r in again.records} == {"cached"}


def test_impossible_budget_exits_2_with_the_closest(tmp_path, random_tiny_dir, capsys):
    path = search_plan(tmp_path, random_tiny_dir, {"max_mb": 0.001})
    with pytest.raises(SearchBudgetError, match="closest: .*MB"):
        run_search(load_plan(path), tmp_path / "out", progress=False)
    assert run_cli.main([str(path), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no candidate" in err[0] and "closest" in err[0]


def test_resume_after_a_kill_reuses_profiles_and_finished_trials(tmp_path, random_tiny_dir, monkeypatch):
    plan = load_plan(search_plan(tmp_path, random_tiny_dir, {"max_mb": 0.5}, max_trials=2))
    real, calls = search_run.run_trial, []

    def dies_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(search_run, "run_trial", dies_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(plan, tmp_path / "out", progress=False)
    monkeypatch.setattr(search_run, "run_trial", real)
    result = run_search(plan, tmp_path / "out", progress=False)
    assert result.stages["profiles_reused"] is True
    assert [t["reused"] for t in result.trials] == [True, False]
    assert "distill" not in result.trials[1]["ran_kinds"]  # the killed run's distillation is shared


@pytest.mark.parametrize("search, where", [
    ({"budget": {"max_mbb": 3}}, "search.budget.max_mbb"),
    ({"budget": {"max_mb": 3}, "objective": "speed"}, "search.objective"),
    ({"budget": {"max_mb": 3}, "space": {"quantize": {"bits": [3]}}}, "search.space"),
    ({"budget": {"max_mb": 3}, "target": "pi5"}, "search.target"),
    ({"budget": {"max_mb": 3}, "space": {"distill": {"tokens": 500}}}, "search.space"),
])
def test_bad_search_keys_name_their_key_path(tmp_path, random_tiny_dir, search, where):
    body = text_plan(random_tiny_dir, [])
    body.pop("steps")
    body["search"] = search
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert any(p.startswith(where) for p in e.value.problems), e.value.problems


def test_a_search_plan_has_no_steps(tmp_path, random_tiny_dir):
    body = text_plan(random_tiny_dir, [{"quantize": {}}], search={"budget": {"max_mb": 3}})
    path = tmp_path / "steps.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(PlanError, match="steps: a plan with search: has no steps"):
        load_plan(path)


def test_the_example_search_plan_validates():
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "search.yaml"
    if not (example.parent / "../../shared/data/teachers/gpt2-6x384-corpus").exists():
        pytest.skip("../shared/data is not beside the checkout")
    plan = load_plan(example)
    assert plan.search.budget.max_mb == 12 and plan.search.search_space.prune.width == [0.33]


def test_mixed_precision_trials_measure_the_size_they_predicted(tmp_path, random_tiny_dir):
    from compress.model_shape import Shape
    from compress.quantization.config import QuantizeConfig
    from compress.search.sizing import weight_bytes

    shape = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=257, n_positions=128)
    int4 = weight_bytes(shape, QuantizeConfig(method="rtn", bits=4, group_size=32, lm_head="int8"))
    space = {"quantize": {"methods": ["rtn"], "bits": [4], "group_sizes": [32], "lm_head": ["int8"], "mixed": True},
             "export": "none"}
    body = text_plan(random_tiny_dir, [])
    body.pop("steps")
    body["search"] = {"target": "orin-nano", "budget": {"max_mb": (int4 + 40_000) / 1e6}, "space": space,
                      "max_trials": 2, "profile": {"windows": 2, "seq_len": 32}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(body))
    result = run_search(load_plan(path), tmp_path / "out", progress=False)
    mixed = [t for t in result.trials if "overrides" in t["steps"][0]["quantize"]]
    assert mixed
    for t in result.trials:
        assert t["weight_bytes"] == round(t["candidate"]["predicted_mb"] * 1e6)  # footprint is exact
        assert t["mb"] <= (int4 + 40_000) / 1e6
