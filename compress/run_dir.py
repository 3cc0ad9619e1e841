"""The run directory on disk: step directories, their records, reuse, the lock, and where --out may be.

    runs/<name>/
      plan.resolved.yaml  manifest.json  report.md  metrics.csv  tensorboard/  .lock  .digests.json
      00-base/   model/  step.json  metrics.json  log.txt  DONE
      01-prune/  model/  step.json  metrics.json  log.txt  DONE

A step is built in a hidden temporary sibling and renamed into place after DONE is written, so a
directory without DONE is never used. step.json records the step's content hash, the sha256 of every
file the step wrote (`outputs`) and what it was made from (`made_from`: the digest of the previous
step's files and of the base model's, its usual teacher). A finished
step is reused only when all three still hold: the hash (config and declared inputs, by content), its
own files byte for byte (re-read on every reuse unless --trust-cache), and the very input it was made
from. Anything else re-runs the step with a one-line notice saying why.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.hashing import DigestCache, digest, tree_files

DONE = "DONE"
STEP_JSON = "step.json"
METRICS_JSON = "metrics.json"
LOCK_FILE = ".lock"
DIGESTS_FILE = ".digests.json"
RECORD_FORMAT = 2  # step.json with outputs / made_from; older records are re-run with a notice
# Written after the step's outputs are recorded (or rewritten by a re-measure): not part of `outputs`.
BOOKKEEPING = frozenset({STEP_JSON, METRICS_JSON, DONE, "log.txt", "validation.json.tmp"})
RUN_MARKERS = ("manifest.json", "plan.resolved.yaml", LOCK_FILE)  # a directory holding one is a run dir of ours


def write_json(path: Path, data: Any) -> None:
    """The one JSON writer: atomically (a temporary sibling, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def record_outputs(step_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file the step wrote (bookkeeping files aside)."""
    files = [f for f in tree_files(step_dir) if f.relative_to(step_dir).parts[0] not in BOOKKEEPING]
    return DigestCache().files(step_dir, files)


def outputs_digest(outputs: dict[str, str]) -> str:
    return digest(outputs)


@dataclass(frozen=True)
class Reuse:
    """Whether a finished step directory can be reused, and when not, why (one line for the log)."""

    ok: bool
    why: str = ""
    info: dict[str, Any] | None = None


def check_reuse(step_dir: Path, h: str, made_from: str | None, verify: bool) -> Reuse:
    """Reuse step_dir only if its hash, its own files and its input are all the ones recorded."""
    if not (step_dir / DONE).exists():
        return Reuse(False)  # never finished (or never started): nothing to say
    try:
        info = read_json(step_dir / STEP_JSON)
    except (OSError, ValueError):
        return Reuse(False, "its step.json is unreadable")
    if not isinstance(info, dict) or info.get("format") != RECORD_FORMAT:
        return Reuse(False, "it was made by an older gpt2-edge that did not record its files")
    if info.get("hash") != h:
        return Reuse(False, "its config or the inputs it reads (data, model, seed) changed")
    if info.get("made_from") != made_from:
        return Reuse(False, "the step before it was made again with other results")
    outputs = info.get("outputs")
    if not isinstance(outputs, dict):
        return Reuse(False, "its step.json has no record of its files")
    if verify:
        changed = _changed_file(step_dir, outputs)
        if changed:
            return Reuse(False, changed)
    return Reuse(True, info=info)


def _changed_file(step_dir: Path, outputs: dict[str, str]) -> str:
    """'' when every recorded file is there with its recorded bytes and no file was added."""
    try:
        now = record_outputs(step_dir)
    except (UserError, OSError) as e:
        return f"its files cannot be read ({e})"
    for rel, sha in outputs.items():
        if rel not in now:
            return f"its file {rel} is missing"
        if now[rel] != sha:
            return f"its file {rel} was modified after the step wrote it"
    extra = sorted(set(now) - set(outputs))
    return f"a file was added to it ({extra[0]})" if extra else ""


# -- where a run may write -------------------------------------------------------------------------

def check_out_dir(out: Path, inputs: list[Path]) -> None:
    """Refuse an --out that would write over the user's files: the root, the home dir, an input
    directory (or a dir inside one, or one that contains an input), or a non-empty dir that is not
    a run directory of gpt2-edge."""
    out = Path(out).expanduser().resolve()
    if out == Path(out.anchor):
        raise UserError(f"--out {out}: is the root of the file system; choose a directory for the run")
    if out == Path.home().resolve():
        raise UserError(f"--out {out}: is the home directory; choose a directory for the run, e.g. runs/NAME")
    for given in inputs:
        p = Path(given).expanduser().resolve()
        if out == p or p.is_dir() and p in out.parents:
            raise UserError(f"--out {out}: is inside the input {p}; a run must not write into its inputs")
        if out in p.parents:
            raise UserError(f"--out {out}: contains the input {p}; choose a directory of its own for the run")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in RUN_MARKERS):
        raise UserError(f"--out {out}: is a non-empty directory that is not a gpt2-edge run directory "
                        "(no manifest.json or plan.resolved.yaml); choose an empty or new directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")


class RunLock:
    """An advisory lock (fcntl) on the run directory: two runs on one --out would race on its steps."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another run (pid {holder}) holds {self.path.parent}; wait for it to finish "
                            "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
