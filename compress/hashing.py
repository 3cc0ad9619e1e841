"""The project's one sha256: of canonical JSON (`digest`), of a file's bytes, of a set of files.

File digests are what the run's cache trusts, so they read only regular files (a FIFO or a device
would block or never end) and are remembered by (path, size, mtime, inode) in a `DigestCache`: a
rerun of an unchanged plan reads no file twice, and a file whose stat changed is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable

from compress.errors import UserError

CHUNK = 1 << 20


def digest(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON, NUL-separated."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def regular_file(path: Path) -> os.stat_result:
    """stat of path, which must be a regular file (FIFOs, sockets and devices are refused unopened)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise UserError(f"{path}: is {kind}; gpt2-edge reads only regular files")
    return st


def file_sha256(path: Path) -> str:
    """sha256 of a regular file's bytes."""
    regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """File digests remembered by (size, mtime_ns, inode, device), optionally persisted as JSON.

    The JSON is only a cache: a missing, unreadable or malformed one is ignored and rebuilt."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                data = json.loads(Path(path).read_text())
                if isinstance(data, dict):
                    self.entries = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 5}
            except (OSError, ValueError):
                pass

    def file(self, path: Path) -> str:
        path = Path(path)
        st = regular_file(path)
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
        hit = self.entries.get(key)
        if hit is not None and hit[:4] == stamp:
            return hit[4]
        value = file_sha256(path)
        self.entries[key] = [*stamp, value]
        self.dirty = True
        return value

    def files(self, root: Path, files: Iterable[Path]) -> dict[str, str]:
        """{path relative to root: sha256} of the given files."""
        return {str(Path(f).relative_to(root)): self.file(Path(f)) for f in sorted(files)}

    def tree(self, root: Path) -> str:
        """One digest of every file under root (names and contents); symbolic links are refused."""
        return digest(self.files(root, tree_files(root)))

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        tmp = Path(self.path).with_name(Path(self.path).name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:  # a cache that cannot be written only costs the next run a re-read
            tmp.unlink(missing_ok=True)


def tree_files(root: Path) -> list[Path]:
    """Every file under root, sorted; a link or a special file is refused (it could point anywhere)."""
    out = []
    for p in sorted(Path(root).rglob("*")):
        if p.is_symlink():
            raise UserError(f"{p}: is a symbolic link; gpt2-edge reads only regular files in a model directory")
        if p.is_dir():
            continue
        regular_file(p)
        out.append(p)
    return out


def dir_digest(path: Path, cache: DigestCache | None = None) -> str:
    """Content hash of a directory (file names and bytes)."""
    return (cache or DigestCache()).tree(Path(path))
