"""TensorRT optimization profiles: from the plan's numbers, to per-input shapes, to trtexec flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from export.profiles import (InputSpec, TensorRTProfile, input_shapes, profile_for, profile_problems, shape_problems,
                             trtexec_shape_flags)

OPTIMUM_INPUTS = [  # what optimum's text-generation-with-past export declares for a 2-layer, 4-head GPT-2
    InputSpec("input_ids", ("batch_size", "sequence_length"), "INT64"),
    *[InputSpec(f"past_key_values.{i}.{kv}", ("batch_size", 4, "past_sequence_length", 16))
      for i in range(2) for kv in ("key", "value")],
    InputSpec("attention_mask", ("batch_size", "past_sequence_length + sequence_length"), "INT64"),
    InputSpec("position_ids", ("batch_size", "sequence_length"), "INT64"),
]


def test_profile_from_plan_numbers():
    p = profile_for(n_positions=1024, seq_len=256, prompt=128, new_tokens=64, batch=1)
    assert p.batch == (1, 1, 1)
    assert p.prompt == (1, 1, 256)  # opt is the decode step; max covers the perplexity window
    assert p.past == (0, 160, 768)  # opt mid-decode of the latency run; max: the rest of the context
    assert profile_problems(p, 1024, seq_len=256, prompt=128, new_tokens=64) == []
    for point in ("min", "opt", "max"):  # the attention mask fits the positions at every point
        assert p.point(point)["total"] <= 1024


def test_long_windows_are_chunked_so_decode_keeps_room():
    p = profile_for(n_positions=1024, seq_len=1024, prompt=128, new_tokens=64)
    assert p.prompt[2] == 256 and p.past[2] == 768  # 1024-token windows run as 4 chunks of 256
    assert profile_problems(p, 1024, seq_len=1024, prompt=128, new_tokens=64) == []


def test_without_latency_settings_the_opt_point_is_a_real_decode():
    from export.profiles import plan_profile

    p = plan_profile(None, 512, 1024)
    assert p.past[1] == 128 + 32 and p.prompt == (1, 1, 256)  # eval.latency's defaults, not a 2-token context


def test_the_max_point_of_the_old_default_is_refused():
    old = TensorRTProfile(prompt=(1, 1, 256), past=(0, 160, 1023))  # what profile_for made before
    assert any("max point (past 1023 + prompt 256)" in p and "1279 long" in p for p in profile_problems(old, 1024))


def test_profile_is_capped_by_positions():
    p = profile_for(n_positions=128, seq_len=None, prompt=200, new_tokens=64)
    assert p.prompt[2] == 64 and p.past == (0, 64, 64)
    assert profile_problems(p, 128) == []


def test_profile_problems_name_the_range():
    bad = TensorRTProfile(prompt=(1, 128, 2048), past=(1, 900, 1024))
    problems = " | ".join(profile_problems(bad, 1024, seq_len=256, prompt=128, new_tokens=64))
    assert "prompt max 2048" in problems
    assert "past max 1024" in problems
    assert "past min 1" in problems
    assert "opt point" in problems


def test_profile_validation():
    with pytest.raises(ValidationError, match="min <= opt <= max"):
        TensorRTProfile(past=(10, 5, 20))
    with pytest.raises(ValidationError, match="at least 1"):
        TensorRTProfile(batch=(0, 1, 1))


def test_input_shapes_are_consistent_at_every_point():
    p = TensorRTProfile(batch=(1, 1, 4), prompt=(1, 1, 256), past=(0, 127, 1023))
    shapes = input_shapes(OPTIMUM_INPUTS, p)
    assert shapes["input_ids"] == {"min": (1, 1), "opt": (1, 1), "max": (4, 256)}
    assert shapes["past_key_values.1.value"]["max"] == (4, 4, 1023, 16)
    for point in ("min", "opt", "max"):  # mask = past + prompt, position_ids = input_ids
        past = shapes["past_key_values.0.key"][point][2]
        assert shapes["attention_mask"][point][1] == past + shapes["input_ids"][point][1]
        assert shapes["position_ids"][point] == shapes["input_ids"][point]


def test_static_inputs_need_no_profile_entry_and_bad_ones_are_reported():
    fixed = TensorRTProfile(prompt=(8, 8, 8))
    assert input_shapes([InputSpec("input_ids", (1, 8))], fixed) == {}
    assert shape_problems(InputSpec("input_ids", (1, 8)), TensorRTProfile()) != []  # static 8 vs 1..512
    p = TensorRTProfile()
    problems = shape_problems(InputSpec("past_key_values.0.key", ("b", "heads", "past", 16)), p)
    assert problems and "axis 1" in problems[0]
    with pytest.raises(ValueError, match="unknown input"):
        input_shapes([InputSpec("pixel_values", ("b", 3))], p)


def test_trtexec_flags():
    p = TensorRTProfile(batch=(1, 1, 2), prompt=(1, 1, 64), past=(0, 32, 127))
    flags = trtexec_shape_flags(input_shapes(OPTIMUM_INPUTS, p))
    assert [f.split("=")[0] for f in flags] == ["--minShapes", "--optShapes", "--maxShapes"]
    assert flags[0].startswith("--minShapes=input_ids:1x1,past_key_values.0.key:1x4x0x16,")
    assert "attention_mask:2x191" in flags[2]
    quoted = trtexec_shape_flags(input_shapes([InputSpec("input_ids", ("b", "s"))], p))
    assert quoted[1] == "--optShapes=input_ids:1x1"
    named = trtexec_shape_flags({"a:b": {"min": (1,), "opt": (2,), "max": (3,)}})
    assert named[2] == "--maxShapes='a:b':3"


def test_the_default_latency_is_the_plans():
    from compress.plan import LatencyConfig
    from export.profiles import DEFAULT_LATENCY

    assert DEFAULT_LATENCY == (LatencyConfig().prompt, LatencyConfig().new_tokens)
