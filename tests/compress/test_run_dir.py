"""Where a run may write, and one run at a time per run directory."""

from pathlib import Path

import pytest

from compress.errors import UserError
from compress.run import main
from compress.run_dir import RunLock, check_out_dir


def test_the_root_and_home_are_refused():
    with pytest.raises(UserError, match="root of the file system"):
        check_out_dir(Path("/"), [])
    with pytest.raises(UserError, match="home directory"):
        check_out_dir(Path.home(), [])


def test_an_input_dir_and_its_parents_and_children_are_refused(tmp_path):
    model = tmp_path / "inputs" / "model"
    model.mkdir(parents=True)
    for out, why in ((model, "inside the input"), (model / "run", "inside the input"),
                     (tmp_path / "inputs", "contains the input")):
        with pytest.raises(UserError, match=why):
            check_out_dir(out, [model])


def test_a_foreign_non_empty_dir_is_refused_and_a_run_dir_accepted(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(UserError, match="not a gpt2-edge run directory"):
        check_out_dir(tmp_path / "photos", [])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    check_out_dir(tmp_path / "run", [])
    check_out_dir(tmp_path / "new", [])


def test_a_second_run_on_the_same_dir_is_told_who_holds_it(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match=r"another run \(pid \d+\) holds"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


def test_the_cli_refuses_out_root_in_one_line(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: x\nmodel: {pretrain: {tokens: 1000}}\ndata:\n  train: {builtin: python-docs}\n"
                    "  eval: {builtin: python-docs, split: heldout, seq_len: 64}\n")
    assert main([str(plan), "--out", "/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out /: is the root")
    assert main([str(plan), "--out", str(tmp_path)]) == 2  # holds the plan file
    assert "contains the input" in capsys.readouterr().err
