"""Errors the user can act on, shared by every layer (evalsuite is the lowest, so compress and export
derive theirs from these and the one error boundary, evalsuite.cli, recognises them all)."""

from __future__ import annotations

import os
import re


class ToolkitError(Exception):
    """A failure caused by what the user gave us (or asked of this machine), not a bug in the toolkit.
    Every command line prints it as one line, `error: <message>`, and exits with `exit_code`."""

    exit_code = 2


class EvalInputError(ToolkitError, ValueError):
    """Bad evaluation input; the CLI prints it as one line."""


class BackendUnavailable(ToolkitError, RuntimeError):
    """A backend's runtime cannot run here (not installed, no GPU). Defined here, not in
    evalsuite.backends, so that the runners the backends load by entry point can raise it without
    importing their loader."""


def os_error_of(e: Exception, path: object = None) -> OSError | None:
    """The OSError inside a safetensors error, which carries it only as text ("Os { code: 28, ... }")."""
    found = re.search(r"[Oo]s \{ code: (\d+)|os error (\d+)", str(e))
    if not found:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code), None if path is None else str(path))
