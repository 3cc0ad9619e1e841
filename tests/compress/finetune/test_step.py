"""The finetune step in a plan: finetune -> prune -> distill, its own text in its hash, plan-time checks."""

import json

import pytest
from transformers import GPT2LMHeadModel

from compress.errors import PlanError
from compress.plan import parse_plan
from compress.planning import step_hashes
from compress.pipeline import run_plan

pytest.importorskip("peft")


def write_texts(tmp_path):
    from evalsuite.data import builtin_text

    text = builtin_text("python-docs", "train")
    (tmp_path / "train.txt").write_text(text[:30_000])
    (tmp_path / "eval.txt").write_text(builtin_text("python-docs", "heldout")[:3_000])
    (tmp_path / "mine.txt").write_text(text[60_000:80_000])  # "the user's text"


FINETUNE = {"data": {"path": "mine.txt"}, "tokens": 64 * 4 * 12, "seq_len": 64, "batch_size": 4, "lr": 3e-3,
            "warmup_steps": 1, "eval_every": 4, "eval_tokens": 1024, "lora": {"r": 4}}


def plan(tmp_path, model_dir, steps):
    raw = {"name": "ft", "model": str(model_dir),
           "data": {"train": {"path": "train.txt"}, "eval": {"path": "eval.txt", "seq_len": 64}},
           "eval": {"latency": None, "targets": [], "samples": None}, "steps": steps}
    return parse_plan(raw, base_dir=tmp_path)


def test_finetune_then_prune_then_distill(tmp_path, trained_tiny):
    write_texts(tmp_path)
    steps = [{"finetune": FINETUNE},
             {"prune": {"mlp": 0.5}},
             {"distill": {"tokens": 64 * 4 * 4, "seq_len": 64, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                          "eval_tokens": 512, "eval_every": 3, "teacher": "base"}}]
    result = run_plan(plan(tmp_path, trained_tiny[0], steps), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    step = json.loads((run / "01-finetune" / "step.json").read_text())
    info = step["info"]
    assert info["lora"] and info["precision"] == "fp32" and info["merge_max_abs_diff"] < 1e-4
    assert info["after"]["ppl"] < info["before"]["ppl"] and info["steps"] == 12
    assert step["inputs"]["texts"]["data"]["text"]  # its own text, by content
    assert (run / "01-finetune" / "adapter" / "adapter_model.safetensors").exists()
    GPT2LMHeadModel.from_pretrained(run / "01-finetune" / "model")  # a stock GPT-2
    assert [r.name for r in result.records] == ["00-base", "01-finetune", "02-prune", "03-distill"]
    assert "fine-tuned (LoRA r=4" in result.records[1].summary
    assert any((run / "tensorboard" / "01-finetune").glob("events.out.tfevents.*"))


def test_the_steps_own_text_is_in_its_hash(tmp_path, trained_tiny):
    write_texts(tmp_path)
    p = plan(tmp_path, trained_tiny[0], [{"finetune": FINETUNE}, {"prune": {"mlp": 0.5}}])
    before = step_hashes(p)
    (tmp_path / "train.txt").write_text("data.train changed, which finetune does not read " * 200)
    assert step_hashes(p)[1] == before[1]
    (tmp_path / "mine.txt").write_text("the fine-tuning text changed " * 500)
    after = step_hashes(p)
    assert after[0] == before[0] and after[1] != before[1] and after[2] != before[2]


def test_finetune_after_quantize_is_a_plan_error(tmp_path, trained_tiny):
    write_texts(tmp_path)
    with pytest.raises(PlanError, match=r"steps\[1\].finetune: fine-tunes a full-precision model"):
        plan(tmp_path, trained_tiny[0], [{"quantize": {"method": "rtn"}}, {"finetune": FINETUNE}])
    with pytest.raises(PlanError, match=r"steps\[0\].finetune.data.path: no such file"):
        plan(tmp_path, trained_tiny[0], [{"finetune": {**FINETUNE, "data": {"path": "nope.txt"}}}])
    with pytest.raises(PlanError, match=r"steps\[0\].finetune.seq_len: 256 exceeds the model's 128 positions"):
        plan(tmp_path, trained_tiny[0], [{"finetune": {**FINETUNE, "seq_len": 256}}])
