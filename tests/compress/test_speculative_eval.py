"""The plan's eval.speculative: validated with the plan, measured once after the steps, in the report."""

import json

import pytest

from compress.errors import PlanError
from compress.plan import load_plan
from compress.pipeline import run_plan

PLAN = """\
name: tiny-spec
model:
  pretrain: {n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64, seq_len: 32, batch_size: 4,
             tokenizer: {vocab_size: 300}, tokens: 3000, checkpoint_every: 10, eval_every: 1000}
data:
  train: {builtin: python-docs, max_chars: 60000}
  eval: {builtin: python-docs, split: heldout, seq_len: 32, max_tokens: 1500}
eval:
  latency: {prompt: 8, new_tokens: 6, repeats: 1, warmup: 0}
  targets: [orin-nano]
  samples: null
  speculative: {draft: DRAFT, k: [1, 3], prompts: 2, repeats: 1}
steps:
  - prune: {mlp: 0.5}
"""


def plan_file(tmp_path, draft="01-prune"):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.replace("DRAFT", draft))
    return path


def test_unknown_step_names_fail_with_the_plan(tmp_path, no_model_loads):
    with pytest.raises(PlanError) as e:
        load_plan(plan_file(tmp_path, draft="02-quantize"), ["eval.speculative.target=01-prune"])
    msg = str(e.value)
    assert "eval.speculative.draft: no step named '02-quantize' (steps: 00-base, 01-prune)" in msg
    with pytest.raises(PlanError, match="eval.speculative.draft: the draft must be another step than the target"):
        load_plan(plan_file(tmp_path, draft="00-base"))
    with pytest.raises(PlanError, match=r"eval.speculative.k\[0\]: Input should be greater than or equal to 1"):
        load_plan(plan_file(tmp_path), ["eval.speculative.k=[0]"])


def test_measured_once_and_reported(tmp_path, monkeypatch):
    out = tmp_path / "run"
    result = run_plan(load_plan(plan_file(tmp_path)), out, progress=False)
    saved = json.loads((out / "speculative.json").read_text())["result"]
    assert [r["k"] for r in saved["per_k"]] == [1, 3] and saved["draft_step"] == "01-prune"
    assert all(r["identical_to_target"] for r in saved["per_k"])
    assert [v["device"] for v in saved["verdict"]] == ["measured here (cpu)", "orin-nano"]
    assert saved["target"]["weight_bytes"] > saved["draft"]["weight_bytes"]  # the pruned draft is smaller
    report = (out / "report.md").read_text()
    assert "## Speculative decoding: 00-base as target, 01-prune as draft" in report
    assert "Speculative decoding: 00-base as target" in (out / "report.html").read_text()
    assert "speculative" not in (out / "metrics.csv").read_text().splitlines()[0]
    # a rerun with nothing changed reuses the measurement; the steps are not re-measured for it either
    monkeypatch.setattr("compress.speculative_eval.measure_speculative",
                        lambda *a, **k: pytest.fail("measured again"))
    again = run_plan(load_plan(plan_file(tmp_path)), out, progress=False)
    assert [r.status for r in again.records] == ["cached", "cached"]
    assert result.metrics[0]["ppl"] == again.metrics[0]["ppl"]
