"""The CLI: python -m compress.run plan.yaml [--out] [--set] [--dry-run]."""

import json
import subprocess
import sys

import torch

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


def test_dry_run_prints_the_steps_first_and_the_plan_on_request(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    assert main([str(plan), "--dry-run", "--out", str(tmp_path / "run"), "--set", "model.pretrain.n_layer=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("00-base") and "will run" in out and "n_layer: 2" not in out
    assert out.splitlines()[1].split()[:1] == ["estimate:"] and "peak memory" in out  # each step's, under it
    assert main([str(plan), "--dry-run", "--show-plan", "--out", str(tmp_path / "run"),
                 "--set", "model.pretrain.n_layer=2"]) == 0
    assert "n_layer: 2" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_full_run_prints_where_the_report_is(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    try:
        assert main([str(plan), "--out", str(tmp_path / "run"), "-q", "--threads", "2"]) == 0
    finally:
        torch.set_num_threads(1)  # the suite's setting (tests/conftest.py)
    assert f"Report: {tmp_path / 'run' / 'report.md'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["cpu_threads"] == 2  # pinned, recorded


def test_missing_plan_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_diverged_distill_fails_the_run_and_is_not_marked_done(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN + "steps:\n  - distill: {tokens: 2000, lr: 1.0, seq_len: 32, batch_size: 4, "
                           "eval_tokens: 1000, eval_every: 2, warmup_steps: 0}\n")
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: distill: held-out ppl") and "not marked done" in err[-1]
    assert (tmp_path / "run" / "00-base" / "DONE").exists()
    assert not (tmp_path / "run" / "01-distill").exists()  # never renamed into place, so never reused


def test_plan_file_errors_and_help_answer_without_importing_torch(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01binary")
    code = f"""
import contextlib, io, sys
from compress.run import main
codes = [main([p]) for p in ({str(tmp_path / 'nope.yaml')!r}, {str(tmp_path / 'bad.yaml')!r}, {str(tmp_path / 'bin.yaml')!r})]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit as e:
        codes.append(e.code)
print(codes, "torch" in sys.modules, "transformers" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "[2, 2, 2, 0] False False", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in proc.stderr
    assert lines[1].endswith("invalid YAML (line 2, column 1): expected ',' or ']', but got '<stream end>'")


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    from pathlib import Path

    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([str(plan), "--out", str(tmp_path / "ro" / "run"), "-q", "--threads", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: Read-only file system ({tmp_path / 'ro' / 'run'}); nothing was written; choose a writable --out"


def test_disk_full_during_a_step_is_one_line_and_marks_nothing_done(tmp_path, capsys, monkeypatch):
    import errno

    import transformers

    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)

    def disk_full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q", "--threads", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: No space left on device (") and "00-base.tmp/model" in err
    assert err.endswith(f"finished steps in {tmp_path / 'run'} are kept; free space and rerun the same command: "
                        "finished steps are reused")
    assert not (tmp_path / "run" / "00-base").exists()


def test_safetensors_write_errors_are_read_for_their_os_error():
    from pathlib import Path

    from safetensors import SafetensorError

    from compress.run import describe_failure

    e = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    code, line = describe_failure(e, Path("/nonexistent/run"))
    assert code == 3 and line.startswith("No space left on device") and "free space and rerun" in line


def test_threads_come_from_the_cli_then_the_plan_then_the_environment(monkeypatch):
    from compress.run import choose_threads, physical_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(2, 5) == 2 and choose_threads(None, 5) == 5 and choose_threads(None, None) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, None) == physical_cores() >= 1


def test_diverged_pretraining_fails_the_base_step(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q", "--threads", "1",
                 "--set", "model.pretrain.lr=1.0", "--set", "model.pretrain.warmup_steps=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: pretrain: held-out ppl") and "lower model.pretrain.lr (now 1)" in err
    assert not (tmp_path / "run" / "00-base").exists()


def test_sigterm_during_a_run_is_one_line_143_like_ctrl_c(tmp_path, capsys, monkeypatch):
    import os
    import signal
    import time

    import compress.pipeline

    def killed(plan, run_dir, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises Terminated here, in the main thread
        time.sleep(30)

    monkeypatch.setattr(compress.pipeline, "run_plan", killed)
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    before = signal.getsignal(signal.SIGTERM)
    assert main([str(plan), "--out", str(tmp_path / "run"), "-q", "--threads", "1"]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "terminated (SIGTERM): finished steps are kept; run the same command again to resume"]
    assert signal.getsignal(signal.SIGTERM) == before
