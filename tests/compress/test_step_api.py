"""The step registry and the example of docs/steps.md: a new step kind is one config and one handler."""

import re
from pathlib import Path

import pytest

from compress import catalog, step_api
from compress.errors import PlanError
from compress.plan import parse_plan
from compress.plan_check import check_steps

DOC = (Path(__file__).resolve().parents[2] / "docs" / "steps.md").read_text(encoding="utf-8")


@pytest.fixture
def doc_step():
    dict(catalog.step_configs())  # every step module imported (registered) first: the snapshot below has them all
    registered = dict(step_api.HANDLERS)
    scope: dict = {}
    exec(compile(re.search(r"```python\n(.*?)```", DOC, re.S).group(1), "docs/steps.md", "exec"), scope)
    yield scope["HalveMlpConfig"]
    step_api.HANDLERS.clear()  # the registration above is undone
    step_api.HANDLERS.update(registered)


def plan(*steps_):
    return {"name": "t", "model": {"pretrain": {"n_layer": 2, "n_embd": 64, "n_head": 4}},
            "data": {"train": {"builtin": "python-docs"}, "eval": {"builtin": "python-docs", "split": "heldout"}},
            "steps": list(steps_)}


def test_the_documented_step_kind_plugs_in(doc_step, no_model_loads):
    assert catalog.step_configs()["halve_mlp"] is doc_step
    p = parse_plan(plan({"halve_mlp": {}}, {"quantize": {"method": "rtn", "bits": 4, "group_size": 64}}))
    assert check_steps(p).states[1].shape.n_inner == 128  # 4 * 64, halved
    with pytest.raises(PlanError) as e:  # the width it made is named when a later step cannot use it
        parse_plan(plan({"halve_mlp": {}}, {"halve_mlp": {}}, {"quantize": {"method": "rtn", "group_size": 128}}))
    assert e.value.problems == ["steps[2].quantize.group_size: 128 does not divide n_embd 64 (input of attn.c_attn, "
                                "attn.c_proj, mlp.c_fc) made by model.pretrain (2x64, 4 heads); group_size 64 or 32 "
                                "divide it",
                                "steps[2].quantize.group_size: 128 does not divide n_inner 64 (input of mlp.c_proj) "
                                "made by steps[1].halve_mlp (halved); group_size 64 or 32 divide it"]
    with pytest.raises(PlanError, match=r"steps\[1\]\.halve_mlp: needs a full-precision model: move it before "
                                        r"steps\[0\]\.quantize"):
        parse_plan(plan({"quantize": {"method": "rtn", "bits": 8}}, {"halve_mlp": {}}))


def test_source_steps_are_not_plan_keys():
    known = catalog.step_configs()
    assert "base" not in known and all(not cls.source for cls in known.values())
    with pytest.raises(PlanError, match=r"steps\[0\]\.base: unknown step"):
        parse_plan(plan({"base": {}}))
