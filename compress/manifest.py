"""manifest.json of a run: what ran it (versions, host, threads) and, at the end, what each step did."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.plan import Plan


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def start_manifest(plan: "Plan") -> dict[str, Any]:
    import torch
    import transformers

    from compress import __version__

    return {"name": plan.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpt2_edge": __version__,
            "git_sha": git_sha(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "host": platform.node(), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads()}
