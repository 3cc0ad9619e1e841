"""The distill step inside a plan run: teacher = the plan's base model, student built from its blocks."""

import json

from transformers import GPT2LMHeadModel

from compress.plan import parse_plan
from compress.pipeline import run_plan


def write_texts(tmp_path):
    from evalsuite.data import builtin_text

    (tmp_path / "train.txt").write_text(builtin_text("python-docs", "train")[:40_000])
    (tmp_path / "eval.txt").write_text(builtin_text("python-docs", "heldout")[:3_000])


def distill_plan(tmp_path, model_dir, **step):
    write_texts(tmp_path)
    raw = {"name": "d", "model": str(model_dir),
           "data": {"train": {"path": "train.txt"}, "eval": {"path": "eval.txt", "seq_len": 64}},
           "eval": {"latency": None, "targets": []},
           "steps": [{"distill": {"student": {"layers": [1]}, "tokens": 64 * 8 * 4, "seq_len": 64, "batch_size": 8,
                                  "lr": 3e-3, "warmup_steps": 2, "eval_tokens": 512, "eval_every": 2,
                                  "loss": {"kl": 1.0, "hidden": 0.1}, **step}}]}
    return parse_plan(raw, base_dir=tmp_path)


def test_distill_step_in_a_plan(tmp_path, trained_tiny):
    plan = distill_plan(tmp_path, trained_tiny[0])
    result = run_plan(plan, tmp_path / "run", progress=False)
    step_dir = tmp_path / "run" / "01-distill"
    model = GPT2LMHeadModel.from_pretrained(step_dir / "model")  # stock GPT-2, 1 block
    assert model.config.n_layer == 1 and (step_dir / "model" / "tokenizer_config.json").exists()
    info = json.loads((step_dir / "step.json").read_text())["info"]
    assert info["steps"] == 4 and info["after"]["kl"] < info["before"]["kl"]
    assert "built from teacher blocks [1]" in result.records[1].summary
    assert any((tmp_path / "run" / "tensorboard" / "01-distill").glob("events.out.tfevents.*"))
    ppl = {row["step"]: row["ppl"] for row in result.metrics}
    assert ppl["01-distill"] > ppl["00-base"]  # one block of two: worse than the teacher, but measured
    assert not (tmp_path / "run" / ".work").exists() or not any((tmp_path / "run" / ".work").iterdir())
