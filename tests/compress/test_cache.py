"""The run cache cannot hand back a stale or tampered step: inputs by content, outputs verified."""

import json
import logging
import os

import pytest
from compress.models import save_model
from compress.plan import load_plan
from compress.run_dir import check_reuse
from compress.pipeline import dry_run, run_plan
from tests.tiny_models import tiny_model

PLAN = """\
name: cache
model: {model}
data:
  train: {{path: train.txt}}
  eval: {{path: eval.txt, seq_len: 32, max_tokens: 400}}
eval: {{latency: null, samples: null, targets: [host]}}
steps:
  - quantize: {{method: gptq, bits: 4, group_size: 32, calib_samples: 8, calib_seq_len: 32}}
"""


@pytest.fixture
def workspace(tmp_path, byte_tokenizer):
    model_dir = save_model(tiny_model(seed=0, vocab_size=len(byte_tokenizer)), tmp_path / "model", byte_tokenizer)
    (tmp_path / "train.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    (tmp_path / "eval.txt").write_text("a stitch in time saves nine, they said again and again. " * 60)
    (tmp_path / "plan.yaml").write_text(PLAN.format(model=model_dir))
    return tmp_path


def statuses(result):
    return [r.status for r in result.records]


def run(ws, out="run", **kw):
    return run_plan(load_plan(ws / "plan.yaml"), ws / out, progress=False, **kw)


def test_new_training_text_reruns_the_calibrated_step(workspace):
    first = run(workspace)
    assert statuses(first) == ["ran", "ran"]
    assert statuses(run(workspace)) == ["cached", "cached"]
    (workspace / "train.txt").write_text("an entirely different calibration text, full of other words. " * 150)
    assert statuses(run(workspace)) == ["cached", "ran"]  # the base reads no training text


def test_new_eval_text_re_measures_without_re_running(workspace):
    first = run(workspace)
    (workspace / "eval.txt").write_text("completely new held-out prose about rivers and mountains. " * 60)
    again = run(workspace)
    assert statuses(again) == ["re-measured", "re-measured"]
    assert again.metrics[0]["ppl"] != first.metrics[0]["ppl"]


def test_an_edited_output_file_is_not_reused(workspace, caplog):
    run(workspace)
    weights = next((workspace / "run" / "01-quantize-gptq-w4g32").rglob("*.safetensors"))
    size = weights.stat().st_size
    stat = weights.stat()
    with open(weights, "r+b") as fh:  # overwrite bytes past the header, keep size and mtime
        fh.seek(size - 64)
        fh.write(b"\x7f" * 64)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="compress.pipeline"):
        again = run(workspace)
    assert statuses(again) == ["cached", "ran"]
    assert "model/model.safetensors was modified" in caplog.text


def test_trust_cache_skips_the_verification(workspace):
    run(workspace)
    (workspace / "run" / "01-quantize-gptq-w4g32" / "model" / "extra.txt").write_text("added")
    assert statuses(run(workspace, trust_cache=True)) == ["cached", "cached"]
    assert statuses(run(workspace)) == ["cached", "ran"]  # verified: a file was added


def test_a_step_is_reused_only_on_the_input_it_was_made_from(workspace, caplog):
    run(workspace)
    info_file = workspace / "run" / "01-quantize-gptq-w4g32" / "step.json"
    info = json.loads(info_file.read_text())
    info["made_from"] = "0" * 64  # as if made from a 00-base with other files
    info_file.write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="compress.pipeline"):
        assert statuses(run(workspace)) == ["cached", "ran"]
    assert "the step before it was made again" in caplog.text


def test_a_base_made_again_with_the_same_bytes_keeps_the_steps_after_it(workspace):
    run(workspace)
    (workspace / "run" / "00-base" / "model" / "config.json").write_text("{}")  # tampered: 00-base re-runs
    assert statuses(run(workspace)) == ["ran", "cached"]  # ...to the same bytes, so 01 still holds


def test_a_record_without_output_digests_is_run_again(workspace, caplog):
    run(workspace)
    info_file = workspace / "run" / "01-quantize-gptq-w4g32" / "step.json"
    info = json.loads(info_file.read_text())
    del info["format"], info["outputs"]  # as an older gpt2-edge wrote it
    info_file.write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="compress.pipeline"):
        assert statuses(run(workspace)) == ["cached", "ran"]
    assert "older gpt2-edge" in caplog.text


def test_hashes_are_stable_across_run_dirs_and_runs(workspace):
    a, b = run(workspace, "a"), run(workspace, "b")
    assert [r.hash for r in a.records] == [r.hash for r in b.records]
    assert dry_run(load_plan(workspace / "plan.yaml"), workspace / "a")[1].split()[1] == "cached"


def test_the_model_dir_is_hashed_by_content(workspace, byte_tokenizer):
    run(workspace)
    save_model(tiny_model(seed=1, vocab_size=len(byte_tokenizer)), workspace / "model", byte_tokenizer)
    assert statuses(run(workspace)) == ["ran", "ran"]


def test_check_reuse_says_nothing_of_a_step_never_run(tmp_path):
    reuse = check_reuse(tmp_path / "01-x", "h", None, verify=True)
    assert not reuse.ok and reuse.why == ""


def test_digests_are_cached_by_file_stat(workspace, monkeypatch):
    from compress import hashing

    run(workspace)
    reads = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: reads.append(p) or real(p))
    run(workspace, trust_cache=True)
    assert reads == []  # inputs unchanged: nothing re-read; outputs trusted
