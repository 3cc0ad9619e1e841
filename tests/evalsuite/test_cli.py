"""evalsuite.cli, the one error boundary of every command line: one line, exit 2 / 3 / 130 / 143."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from evalsuite import cli
from evalsuite.errors import EvalInputError, ToolkitError


def _run(body, argv=(), capsys=None):
    code = cli.run_cli(body, list(argv))
    return code, capsys.readouterr().err if capsys else ""


def _raiser(e: BaseException):
    def body() -> int:
        raise e
    return body


@pytest.mark.parametrize("error, code, start", [
    (EvalInputError("data.txt: empty"), 2, "error: data.txt: empty"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x"), 3, "error: No space left on device (/out/x); free space"),
    (OSError(errno.EROFS, "Read-only file system", "/ro"), 3, "error: Read-only file system (/ro); choose a writable"),
    (PermissionError(errno.EACCES, "Permission denied", "/p"), 3, "error: Permission denied (/p); fix the permissions"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"), 2, "error: No such file or directory (/nope)"),
    (MemoryError(), 3, "error: out of memory"),
])
def test_known_failures_are_one_line_with_their_exit_code(capsys, error, code, start):
    got, err = _run(_raiser(error), capsys=capsys)
    assert got == code
    assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err


def test_compress_user_errors_are_recognised_without_importing_compress_here(capsys):
    from compress.errors import PlanError, UserError

    assert issubclass(UserError, ToolkitError)
    assert _run(_raiser(UserError("steps[0]: bad")), capsys=capsys) == (2, "error: steps[0]: bad\n")
    code, err = _run(_raiser(PlanError(["a: x", "b: y"], "p.yaml")), capsys=capsys)
    assert code == 2 and err.splitlines() == ["error: p.yaml: 2 problem(s) in the plan:", "  a: x", "  b: y"]


def test_interrupt_is_one_line_130(capsys):
    assert _run(_raiser(KeyboardInterrupt()), capsys=capsys) == (130, "interrupted\n")


def test_bugs_keep_their_traceback_and_debug_shows_it_for_known_failures(capsys, monkeypatch):
    with pytest.raises(ZeroDivisionError):
        cli.run_cli(lambda: 1 // 0, [])
    with pytest.raises(EvalInputError):
        cli.run_cli(_raiser(EvalInputError("x")), ["--debug"])
    monkeypatch.setenv("GPT2_EDGE_DEBUG", "1")
    with pytest.raises(OSError):
        cli.run_cli(_raiser(OSError(errno.ENOSPC, "full")), [])
    monkeypatch.setenv("GPT2_EDGE_DEBUG", "0")
    assert cli.run_cli(_raiser(OSError(errno.ENOSPC, "full")), []) == 3


def test_argparse_errors_are_one_line(capsys):
    p = cli.ArgumentParser(prog="prog")
    p.add_argument("--threads", type=cli.thread_count)
    for bad in (["--threads", "0"], ["--threads", "-3"], ["--threads", "two"], ["--nope"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(bad)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: prog: ") and err.count("\n") == 1, err
    assert p.parse_args(["--threads", "2"]).threads == 2


def test_sigterm_is_handled_like_ctrl_c_one_line_143(tmp_path):
    """A real process: the handler raises Terminated in the main thread, `finally` blocks run."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from evalsuite import cli
        def body():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            finally:
                open({str(tmp_path / 'cleaned')!r}, 'w').close()
            return 0
        sys.exit(cli.run_cli(body, []))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and proc.stderr == "terminated (SIGTERM)\n"
    assert (tmp_path / "cleaned").exists()


def test_sigterm_handler_is_restored_after_the_boundary():
    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_cli(lambda: 0, []) == 0
    assert signal.getsignal(signal.SIGTERM) == before


def test_device_check():
    import torch

    assert cli.check_device("cpu") == "cpu"
    with pytest.raises(ToolkitError, match="--device meta: cannot run a model there"):
        cli.check_device("meta")
    with pytest.raises(ToolkitError, match="not a torch device"):
        cli.check_device("gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ToolkitError, match="--device cuda: .*use --device cpu"):
            cli.check_device("cuda")


def test_boundary_module_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", "import sys, evalsuite.cli, compress.errors; "
                           "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.strip() == "False", proc.stderr
