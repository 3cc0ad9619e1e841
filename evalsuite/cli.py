"""The one error boundary of every command line (compress.run, export.generate, python -m evalsuite,
export.tensorrt, the bench scripts).

Whatever a user can cause or meet ends as exactly one line on stderr, `error: <what failed, where,
what next>`, and an exit status:
  2    the input: a plan, a path, a model, a flag (every ToolkitError: compress.errors.UserError and
       evalsuite.errors.EvalInputError derive from it, so this module needs no import from above);
       a bad command line too (ArgumentParser below prints argparse's complaint as one line)
  3    the machine said no: disk full, read-only, permissions (OSError), out of memory (MemoryError)
  130  Ctrl-C (KeyboardInterrupt), one line
  143  SIGTERM, handled like Ctrl-C: a handler raises Terminated in the main thread, so `finally`
       blocks run and temporary files are cleaned up as they are on Ctrl-C
`--debug` on the command line or GPT2_EDGE_DEBUG=1 re-raises instead, with the traceback. Anything
else (a bug in the toolkit) keeps its traceback. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence

from safetensors import SafetensorError  # the Rust extension only; safetensors.torch would import torch

from evalsuite.errors import ToolkitError, os_error_of

EXIT_USER = 2  # a plan, input, flag or training problem (ToolkitError)
EXIT_WORLD = 3  # the machine said no: disk full, read-only, permissions, out of memory
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
MAX_THREADS = 1024

FAILURES = (ToolkitError, OSError, SafetensorError, MemoryError)  # what the boundary turns into one line
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}  # a path given wrong

_OS_ADVICE_RUN = {
    errno.ENOSPC: "free space and rerun the same command: finished steps are reused",
    errno.EDQUOT: "free space (disk quota exceeded) and rerun the same command: finished steps are reused",
    errno.EROFS: "choose a writable --out",
    errno.EACCES: "choose a writable --out, or fix the permissions",
    errno.EPERM: "choose a writable --out, or fix the permissions",
}
_OS_ADVICE = {
    errno.ENOSPC: "free space and rerun",
    errno.EDQUOT: "free space (disk quota exceeded) and rerun",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
}


class Terminated(BaseException):
    """SIGTERM arrived (raised by the handler `sigterm_raises` installs). A BaseException, like
    KeyboardInterrupt, so `except Exception` in library code does not swallow it."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the toolkit's error form: one line, `error: PROG: MESSAGE (see PROG --help)`, exit 2
    (argparse's own is a usage block and a second line)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER)


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: GPT2_EDGE_DEBUG=1)")
    return parser


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """--debug among the arguments (before a `--`), or GPT2_EDGE_DEBUG set to anything but 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = args[:args.index("--")] if "--" in args else args
    return "--debug" in args or os.environ.get("GPT2_EDGE_DEBUG", "") not in ("", "0")


def describe_failure(e: BaseException, run_dir: Path | None = None, run: bool = False) -> tuple[int, str]:
    """(exit code, message) of a failure the user can act on: what failed, where, what next; with
    `run` (a plan run), also what was kept in `run_dir`."""
    if isinstance(e, ToolkitError):
        return e.exit_code, str(e)  # a PlanError has one line per problem
    kept = ""
    if run:
        kept = "; " + (f"finished steps in {run_dir} are kept" if run_dir is not None and Path(run_dir).is_dir()
                       else "nothing was written")
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        what = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
        if e.errno in _INPUT_ERRNOS:
            return EXIT_USER, f"{what}{where}{kept}"
        if run:
            advice = _OS_ADVICE_RUN.get(e.errno, "fix the cause and rerun the same command: finished steps are reused")
        else:
            advice = _OS_ADVICE.get(e.errno, "fix the cause and rerun")
        return EXIT_WORLD, f"{what}{where}{kept}; {advice}"
    if isinstance(e, SafetensorError):  # its I/O errors carry the OS error only as text
        inner = os_error_of(e)
        if inner is not None:
            return describe_failure(inner, run_dir, run)
        return EXIT_USER, f"safetensors: {str(e).splitlines()[0] if str(e) else 'unreadable file'}{kept}"
    if run:
        return EXIT_WORLD, f"out of memory{kept}; lower batch sizes or free memory and rerun the same command"
    return EXIT_WORLD, "out of memory; free memory, or use a smaller model or input, and rerun"


def handle(e: BaseException, debug: bool, run_dir: Path | None = None, run: bool = False) -> int:
    """Call from `except BaseException as e:` (or narrower): prints the one line of a known failure and
    returns its exit code; re-raises (bare `raise`) what it does not own, and everything under debug."""
    if isinstance(e, KeyboardInterrupt):
        tail = ": finished steps are kept; run the same command again to resume" if run else ""
        print(f"interrupted{tail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(e, Terminated):
        tail = ": finished steps are kept; run the same command again to resume" if run else ""
        print(f"terminated (SIGTERM){tail}", file=sys.stderr)
        return EXIT_TERMINATED
    if debug or not isinstance(e, FAILURES):
        raise  # noqa: PLE0704 (re-raises the exception being handled by the caller)
    code, line = describe_failure(e, run_dir, run)
    print(f"error: {line}", file=sys.stderr)
    return code


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated in the main thread (restored after; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(body: Callable[[], int], argv: Sequence[str] | None = None) -> int:
    """Run a command line's body inside the boundary: its return value, or a failure's exit code."""
    try:
        with sigterm_raises():
            return body()
    except (KeyboardInterrupt, Terminated, *FAILURES) as e:
        return handle(e, debug_requested(argv))


# -- flags every CLI checks the same way -------------------------------------------------------------------

def thread_count(text: str) -> int:
    """argparse `type` of every --threads: an integer in 1..MAX_THREADS (0 and negatives are refused, not ignored)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_THREADS} (got {n})")
    return n


def check_device(device: str, flag: str = "--device") -> str:
    """A torch device string this machine can run a model on (cpu, cuda, cuda:N); one line if not.
    Imports torch (only the CLIs that load a model call it)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ToolkitError(f"{flag} {device}: not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise ToolkitError(f"{flag} {device}: cannot run a model there (use cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ToolkitError(f"{flag} {device}: {why} (torch {torch.__version__}); use --device cpu, or install "
                           "the CUDA build of torch on a machine with an NVIDIA GPU")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ToolkitError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
