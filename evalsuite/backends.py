"""Find the runner for a non-torch artifact without importing the packages that provide it.

Backends are plugins named in the `gpt2_edge.runners` entry-point group (see pyproject.toml), each a
function `open_runner(path: Path, device: str) -> Runner` (each backend's own opener);
`open_backend(name, path, device)` finds and calls the one of a backend. This keeps evalsuite free of imports from
export/ while `python -m evalsuite model.onnx` and the plan runner can still measure ONNX or TensorRT
artifacts. An opener raises BackendUnavailable when its runtime is not installed here (e.g. TensorRT).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from evalsuite.errors import BackendUnavailable
from evalsuite.runner import Runner

GROUP = "gpt2_edge.runners"


def backend_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def open_backend(backend: str, path: str | Path, device: str = "cpu") -> Runner:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == backend]
    if not found:
        raise BackendUnavailable(f"no runner registered for backend {backend!r} "
                                 f"(known: {', '.join(backend_names()) or 'none'}; is gpt2-edge installed?)")
    return found[0].load()(Path(path), device)
