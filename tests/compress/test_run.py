"""The CLI: python -m compress.run plan.yaml [--out] [--set] [--dry-run]."""

import subprocess
import sys

from compress.run import main

PLAN = """\
name: cli
model:
  pretrain: {n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, seq_len: 32, batch_size: 4,
             tokenizer: {vocab_size: 300}, tokens: 2000}
data:
  train: {builtin: python-docs, max_chars: 50000}
  eval: {builtin: python-docs, split: heldout, seq_len: 32, max_tokens: 800}
eval: {latency: null}
"""


def test_bad_plan_is_one_line_per_problem_without_traceback(tmp_path):
    plan = tmp_path / "bad.yaml"
    plan.write_text(PLAN.replace("n_layer: 1", "n_layer: 0").replace("latency: null", "latency: null, colour: red"))
    proc = subprocess.run([sys.executable, "-m", "compress.run", str(plan)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "model.pretrain.n_layer: Input should be greater than or equal to 1 (got 0) (line 3)" in proc.stderr
    assert "eval.colour: unknown key (line 8)" in proc.stderr


def test_dry_run_prints_resolved_plan_and_steps(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    assert main([str(plan), "--dry-run", "--out", str(tmp_path / "run"), "--set", "model.pretrain.n_layer=2"]) == 0
    out = capsys.readouterr().out
    assert "n_layer: 2" in out and "00-base" in out and "will run" in out
    assert not (tmp_path / "run").exists()


def test_full_run_prints_where_the_report_is(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert f"Report: {tmp_path / 'run' / 'report.md'}" in capsys.readouterr().out


def test_missing_plan_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_diverged_distill_fails_the_run_and_is_not_marked_done(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN + "steps:\n  - distill: {tokens: 2000, lr: 1.0, seq_len: 32, batch_size: 4, "
                           "eval_tokens: 1000, eval_every: 2, warmup_steps: 0}\n")
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: distill: held-out ppl") and "not marked done" in err[-1]
    assert (tmp_path / "run" / "00-base" / "DONE").exists()
    assert not (tmp_path / "run" / "01-distill").exists()  # never renamed into place, so never reused
