"""Size: parameters, bytes on disk, peak resident memory (sampled inside a block, or the kernel's
per-process peak, which the plan runner resets before each step: compress.pipeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".engine", ".plan", ".bin", ".gguf")
# Second copies of the weights beside the file that ships (the export's CPU decode graph beside
# model.onnx; the ONNX a TensorRT engine was built from, beside the engine): a deployment ships one,
# so a directory's weight bytes count each weight once, in the file that runs.
ALTERNATE_GRAPHS = {"model_decode.onnx": "model.onnx", "model.onnx": "model.engine"}


def gpt2_param_count(vocab_size: int, n_positions: int, n_layer: int, n_embd: float, n_inner: float,
                     tied: bool = True) -> float:
    """Parameters of a GPT2LMHeadModel of this shape, the tied head counted once. Widths may be
    fractional, for searches over a continuous width scale."""
    E, I, V, P = n_embd, n_inner, vocab_size, n_positions
    block = 4 * E * E + 2 * E * I + 9 * E + I  # ln_1, c_attn (q|k|v), c_proj, ln_2, c_fc, mlp.c_proj
    return V * E + P * E + n_layer * block + 2 * E + (0 if tied else V * E)  # wte, wpe, blocks, ln_f, head


def bytes_on_disk(path: str | Path, weights_only: bool = False) -> int:
    """Bytes of a file or of every file under a directory (optionally only weight files)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file()]
    if weights_only:
        files = [p for p in files if p.suffix in WEIGHT_SUFFIXES and not _alternate(p)]
    return sum(p.stat().st_size for p in files)


def _alternate(p: Path) -> bool:
    """A second graph (ALTERNATE_GRAPHS) whose first graph is beside it, or that graph's external data."""
    name = p.name.removesuffix(".data")
    return name in ALTERNATE_GRAPHS and (p.parent / ALTERNATE_GRAPHS[name]).is_file()


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _page_size()
    except OSError:
        return 0


def reset_peak_rss() -> bool:
    """Reset this process's kernel-kept peak RSS (VmHWM) to its current RSS, so that the next
    `peak_rss_bytes()` is the peak since now: "5" written to /proc/self/clear_refs (Linux >= 4.0).
    False where that is not allowed or not Linux: the peak then runs from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The kernel's peak resident memory of this process (VmHWM; getrusage's ru_maxrss elsewhere, which
    never resets); None where neither is available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass  # not Linux: getrusage below
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere
    except (ImportError, OSError):
        return None


def _page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager sampling the peak resident memory (CPU) or allocated CUDA memory inside it."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.002):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch  # here: gpt2_param_count serves plan validation, which imports no torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
