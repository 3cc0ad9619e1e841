"""--dry-run's cost model (compress.cost): the estimates' structure, the hour warning and the cache.
Rates are injected: what is tested is the arithmetic and the wiring, not this machine's speed."""

from __future__ import annotations

import json

from compress import cost
from compress.cost import Rates
from compress.cost import measure_rates as real_measure_rates  # bound before conftest's stand-in replaces it
from compress.model_shape import Shape
from compress.plan import parse_plan
from compress.step_api import Work
from compress.pipeline import dry_run

SLOW = Rates(train_flops=1e9, forward_flops=3e9)


def plan(tokens: int, *steps):
    return parse_plan({"name": "t", "model": {"pretrain": {"n_layer": 2, "n_embd": 64, "n_head": 4, "tokens": tokens,
                                                           "tokenizer": {"vocab_size": 512}}},
                       "data": {"train": {"builtin": "python-docs"},
                                "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64}},
                       "steps": list(steps)})


def test_each_step_is_followed_by_its_estimate_then_the_totals(tmp_path, no_model_loads):
    p = plan(24_000, {"distill": {"tokens": 50_000, "seq_len": 64, "student": {"n_layer": 1}}},
             {"quantize": {"method": "rtn", "bits": 8}}, {"export": {"format": "onnx"}})
    lines = dry_run(p, tmp_path / "run", rates=SLOW, estimate=True)
    steps, estimates = lines[0:8:2], lines[1:8:2]
    assert [s.split()[0] for s in steps] == ["00-base", "01-distill", "02-quantize-rtn-w8", "03-export-onnx"]
    for e in estimates:
        assert e.split()[0] == "estimate:" and ", disk " in e and ", peak memory " in e
    assert "while it runs" in estimates[0] and "while it runs" in estimates[1]  # training checkpoints
    assert "while it runs" not in estimates[2]
    assert lines[8].startswith("estimate: ") and "of step work" in lines[8]
    assert not any(line.startswith("warning:") for line in lines)


def test_a_step_over_an_hour_is_warned_about(tmp_path, no_model_loads):
    lines = dry_run(plan(10**9), tmp_path / "run", rates=SLOW, estimate=True)
    [warning] = [line for line in lines if line.startswith("warning:")]
    assert warning.startswith("warning: 00-base is estimated at") and "over an hour" in warning
    assert "lower its tokens" in warning


def test_time_scales_with_tokens_and_flops_memory_with_the_logits():
    shape = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=512, n_positions=128)
    from compress.plan_state import PlanState

    state = PlanState(train_data=True, eval_seq_len=64, shape=shape, base=shape)
    one = cost.estimate("s", Work(train_tokens=1000, seq_len=64, batch=8), None, state, SLOW)
    two = cost.estimate("s", Work(train_tokens=2000, seq_len=64, batch=8), None, state, SLOW)
    fast = cost.estimate("s", Work(train_tokens=1000, seq_len=64, batch=8), None, state, Rates(2e9, 6e9))
    assert two.time_s == 2 * one.time_s and fast.time_s == one.time_s / 2
    big_vocab = PlanState(train_data=True, eval_seq_len=64, shape=Shape(2, 4, 16, 256, 50257, 128))
    wide = cost.estimate("s", Work(train_tokens=1000, seq_len=256, batch=64), None, big_vocab, SLOW)
    assert wide.peak_bytes > 3 * 2**30  # 64 x 256 tokens of 50257-way logits: the 3.9 GB of issue 29
    assert one.disk_bytes == 4 * int(cost.params(shape)) and one.work_disk_bytes == 4 * one.disk_bytes
    [line, warning] = cost.summary_lines([one, wide], memory=2 * 2**30)  # more than the machine has: said so
    assert line.startswith("estimate: ") and warning.startswith("warning: s may need") and "has 2.0 GB" in warning


def test_rates_are_measured_once_per_machine_and_shape_then_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cost, "measure_rates", lambda *a, **k: calls.append(a) or Rates(5e8, 1e9))
    shape = Shape(n_layer=4, n_head=4, head_dim=16, n_inner=256, vocab_size=512, n_positions=128)
    cache = tmp_path / "costs.json"
    first = cost.machine_rates(shape, 1, Work(train_tokens=1, batch=8, seq_len=64), cache)
    again = cost.machine_rates(shape, 1, Work(train_tokens=1, batch=8, seq_len=64), cache)
    assert (first.train_flops, first.forward_flops) == (again.train_flops, again.forward_flops) == (5e8, 1e9)
    assert len(calls) == 1 and again.measured_on
    [key] = json.loads(cache.read_text())
    assert "threads 1" in key and "torch " in key and "2x64" in key and "batch 8 x 64" in key  # 2 blocks measured
    cost.machine_rates(shape, 2, Work(train_tokens=1, batch=8, seq_len=64), cache)  # other threads: measured again
    assert len(calls) == 2


def test_measure_rates_times_a_real_step():
    r = real_measure_rates(Shape(n_layer=1, n_head=2, head_dim=16, n_inner=64, vocab_size=64, n_positions=32), 1, 2, 16,
                           repeats=1)
    assert r.train_flops > 0 and r.forward_flops > 0


def test_a_rate_measured_on_a_busy_machine_is_flagged_and_not_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cost, "measure_rates", lambda *a, **k: calls.append(a) or Rates(5e8, 1e9))
    monkeypatch.setattr(cost, "busy_reason", lambda: "load 7.3 on 2 cores")
    shape = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=512, n_positions=128)
    cache = tmp_path / "costs.json"
    rates = cost.machine_rates(shape, 1, Work(train_tokens=1, batch=8, seq_len=64), cache)
    assert rates.busy == "load 7.3 on 2 cores" and not cache.exists()
    cost.machine_rates(shape, 1, Work(train_tokens=1, batch=8, seq_len=64), cache)
    assert len(calls) == 2  # measured again
    one = cost.StepEstimate("s", 60.0, 1000)
    assert any("busy" in line and "load 7.3" in line for line in cost.summary_lines([one], busy=rates.busy))
