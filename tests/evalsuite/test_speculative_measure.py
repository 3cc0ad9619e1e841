"""The speculative measurement: acceptance, speed per k, roofline projection and verdict per device."""

import copy

import pytest
import torch

from evalsuite.errors import EvalInputError
from evalsuite.metrics import ModelFacts
from evalsuite.runner import TorchRunner
from evalsuite.speculative_measure import (SpeculativeMeasureSettings, measure_speculative, projected_speedup,
                                           prompts_from, step_seconds, verdicts)
from evalsuite.speculative_report import speculative_lines
from tests.tiny_models import tiny_model

BIG = ModelFacts(params=124_000_000, n_layer=12, n_embd=768, weight_bytes=248_000_000)
SMALL = ModelFacts(params=30_000_000, n_layer=4, n_embd=384, weight_bytes=15_000_000)


def test_projection_is_the_roofline_formula():
    # a draft as costly as the target that is always right: k+1 tokens for k+1 calls' worth of time
    assert projected_speedup(5.0, 4, BIG, BIG, "orin-nano", 192) == pytest.approx(1.0)
    c = step_seconds(SMALL, "orin-nano", 192) / step_seconds(BIG, "orin-nano", 192)
    assert 0 < c < 0.2 and step_seconds(BIG, "orin-nano", 192) == pytest.approx(
        (248_000_000 + 2 * 12 * 192 * 768 * 2) / 68e9)
    assert projected_speedup(3.0, 4, BIG, SMALL, "orin-nano", 192) == pytest.approx(3.0 / (1 + 4 * c))
    # bandwidth cancels: two bandwidth-bound GPUs with fp16 KV project the same speedup
    assert projected_speedup(3.0, 4, BIG, SMALL, "agx-orin", 192) == pytest.approx(
        projected_speedup(3.0, 4, BIG, SMALL, "h100", 192))


def test_verdict_says_worth_it_only_above_1_1x():
    per_k = [{"k": 2, "adaptive": False, "speedup": 1.05, "projected_speedup": {"orin-nano": 1.3, "h100": 1.08}},
             {"k": 4, "adaptive": False, "speedup": 0.9, "projected_speedup": {"orin-nano": 1.6, "h100": 1.1}}]
    v = {x["device"]: x for x in verdicts(per_k, ("orin-nano", "h100"), "cpu")}
    assert v["measured here (cpu)"]["worth_it"] is False and v["measured here (cpu)"]["k"] == 2
    assert v["orin-nano"] == {"device": "orin-nano", "kind": "projected", "k": 4, "adaptive": False,
                              "speedup": 1.6, "worth_it": True}
    assert v["h100"]["worth_it"] is False  # 1.1 exactly is not above the bar


def test_measure_on_tiny_models_and_report_section():
    target_model = tiny_model(seed=0)
    draft_model = copy.deepcopy(target_model)
    with torch.no_grad():
        draft_model.transformer.h[1].mlp.c_proj.weight.mul_(0.5)  # close to the target, not equal
    target, draft = TorchRunner(target_model), TorchRunner(draft_model)
    facts = ModelFacts(params=1, n_layer=2, n_embd=64, weight_bytes=400_000)
    ids = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0))
    settings = SpeculativeMeasureSettings(ks=(1, 3), prompt=12, new_tokens=10, prompts=2, repeats=1, warmup=0,
                                          adaptive=True)
    prompts = prompts_from(ids, 2, 12)
    assert [len(p) for p in prompts] == [12, 12] and prompts[0] == ids[:12].tolist()
    s = measure_speculative(target, draft, prompts, facts, facts, settings, targets=("orin-nano",))
    assert [(r["k"], r["adaptive"]) for r in s["per_k"]] == [(1, False), (3, False), (1, True), (3, True)]
    for r in s["per_k"]:
        assert r["identical_to_target"] and 0 < r["acceptance_rate"] <= 1
        assert 1 <= r["tokens_per_target_call"] <= r["k"] + 1 or r["adaptive"]
        k = r["mean_k"] if r["adaptive"] else r["k"]
        assert r["projected_speedup"]["orin-nano"] == pytest.approx(r["tokens_per_target_call"] / (1 + k))
        assert r["target_call_ms"] > 0 and r["draft_call_ms"] > 0
        assert r["speedup"] == pytest.approx(s["target_alone"]["decode_ms_per_token"] / r["decode_ms_per_token"])
    assert [v["device"] for v in s["verdict"]] == ["measured here (cpu)", "orin-nano"]
    md = "\n".join(speculative_lines([{"step": "00-base", "speculative": {**s, "draft_step": "01-draft"}},
                                      {"step": "01-draft"}]))
    assert "## Speculative decoding: 00-base as target, 01-draft as draft" in md
    assert "| orin-nano |" in md and "| 3 adaptive |" in md and "| target alone |" in md
    with pytest.raises(EvalInputError, match="exceeds the target's 128 positions"):
        measure_speculative(target, draft, prompts_from(ids, 1, 120), facts, facts, settings)
    with pytest.raises(EvalInputError, match="fewer than one"):
        prompts_from(ids[:10], 1, 12)
