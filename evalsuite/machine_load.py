"""How busy the rest of the machine was while we measured, so a timing can say whether to trust it.

`OtherLoad` reads /proc/stat (every process's CPU time) and /proc/self/stat (ours) around a block and
reports the cores that *other* processes kept busy meanwhile. A 2-core VM where a second job takes a
core makes every latency 2-4x slower (spin-waiting runtimes worse), which a single median cannot show.
Off Linux the readings are None and nothing is flagged on their account.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

BUSY_CORES = 0.25  # other processes using more than a quarter of a core: the timing is suspect
MAX_SPREAD = 0.25  # (p90 - p10) / p50 above this: the runs disagree too much for one number


def _busy_ticks() -> int | None:
    """Clock ticks every CPU spent not idle since boot (user+nice+system+irq+softirq+steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _own_ticks() -> int | None:
    """Clock ticks this process (all its threads) spent on a CPU since it started."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


@dataclass
class OtherLoad:
    """with OtherLoad() as load: ...  then load.cores: the cores other processes used, on average."""

    cores: float | None = None
    loadavg_before: float | None = None
    loadavg_after: float | None = None

    def __enter__(self) -> "OtherLoad":
        self._t0, self._busy0, self._own0 = time.monotonic(), _busy_ticks(), _own_ticks()
        self.loadavg_before = _loadavg()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, elapsed = _busy_ticks(), _own_ticks(), time.monotonic() - self._t0
        self.loadavg_after = _loadavg()
        if None in (busy, own, self._busy0, self._own0) or elapsed <= 0:
            return
        ticks = os.sysconf("SC_CLK_TCK")
        self.cores = max(0.0, ((busy - self._busy0) - (own - self._own0)) / ticks / elapsed)


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def reliability(spread: float | None, other_cores: float | None) -> str | None:
    """None when a timing can be trusted, else why not (one phrase for the report)."""
    why = []
    if other_cores is not None and other_cores > BUSY_CORES:
        why.append(f"other processes used {other_cores:.2f} cores while it ran")
    if spread is not None and spread > MAX_SPREAD:
        why.append(f"the runs spread {spread:.0%} around the median (p10..p90)")
    return "; ".join(why) or None
