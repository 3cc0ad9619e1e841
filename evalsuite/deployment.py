"""Which artifact to ship to each target device of a run, and why.

Whoever writes an artifact declares what runs it (a `Runtime`: the export targets in export/, the
PyTorch default for model dirs in compress.measure); metrics.json carries it as "runtime". A device
(evalsuite.hardware) offers processors; an artifact runs on a device when its runtime runs on one of
them. No format or backend name is compared here.

The pick for a device: among the measured artifacts that run there with perplexity within the
report's budget (ppl <= ppl_budget x base ppl), the one with the highest decode tokens/s on that
device (measured on the host, the roofline projection elsewhere), ties to the smaller file; an
artifact of a deployment runtime (ONNX Runtime, TensorRT, llama.cpp) before a PyTorch model dir,
which is picked only where no export runs within the budget. Artifacts that run there but have no
measurement (a TensorRT engine is built on the device) are listed under the pick with their
projection and the reason, never left out. evalsuite.summary renders the picks as the report's table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from evalsuite.hardware import CPU, HOST, NVIDIA_GPU, processors


@dataclass(frozen=True)
class Runtime:
    """What runs an artifact, as its writer declares it."""

    name: str  # "ONNX Runtime", "TensorRT", "llama.cpp"
    runs_on: tuple[str, ...]  # evalsuite.hardware processors: CPU, NVIDIA_GPU
    deploys: bool = True  # an inference runtime for devices (False: PyTorch, a fallback pick only)
    unmeasured_reason: str = ""  # why a row of it may have no measurement here ("engine is built on the device")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runs_on": list(self.runs_on)}

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Runtime | None":
        """The runtime a metrics.json row declares (None for rows written before rows declared one)."""
        d = row.get("runtime")
        if not isinstance(d, dict):
            return None
        return cls(d["name"], tuple(d["runs_on"]), bool(d.get("deploys", True)), d.get("unmeasured_reason", ""))


TORCH = Runtime("PyTorch (transformers)", (CPU, NVIDIA_GPU), deploys=False)


@dataclass(frozen=True)
class Option:
    """One artifact that runs on one device."""

    row: dict[str, Any]
    runtime: Runtime
    tokens_per_s: float | None
    measured: bool  # tokens_per_s measured here (the host) rather than projected

    @property
    def file(self) -> str:
        return f"{self.row['step']}/{self.row['artifact']}" if self.row.get("artifact") else self.row["step"]

    def speed(self) -> str:
        if self.tokens_per_s is None:
            return "–"
        return f"{self.tokens_per_s:,.0f} " + ("measured" if self.measured else "projected")


@dataclass(frozen=True)
class Pick:
    device: str
    processors: tuple[str, ...]
    ship: Option | None
    why: str
    unmeasured: list[Option] = field(default_factory=list)  # run there, no measurement here


def runs_on(runtime: Runtime, device: str) -> tuple[str, ...]:
    """The processors of `device` that `runtime` runs on (empty: it does not run there)."""
    return tuple(p for p in processors(device) if p in runtime.runs_on)


def is_measured_row(row: dict[str, Any]) -> bool:
    """Measured here (False: a runtime that could not run here, e.g. a TensorRT engine built on the device)."""
    return row.get("status") in (None, "measured")


def option(row: dict[str, Any], runtime: Runtime, device: str) -> Option:
    """The row's decode tokens/s on device: measured where it was measured (the host's CPU), else projected."""
    if device == HOST and row.get("host_roofline") and row.get("tokens_per_s"):
        return Option(row, runtime, row["tokens_per_s"], True)
    return Option(row, runtime, (row.get("projected_decode_tokens_per_s") or {}).get(device), False)


def within_budget(row: dict[str, Any], base_ppl: float | None, ppl_budget: float) -> bool:
    """ppl <= ppl_budget x base ppl; with perplexity not measured (eval.perplexity: false) every row is."""
    if base_ppl is None:
        return True
    return row.get("ppl") is not None and row["ppl"] <= ppl_budget * base_ppl


def devices(rows: list[dict[str, Any]]) -> list[str]:
    """The run's target devices (eval.targets: every row is projected for each), in the order given."""
    seen: list[str] = []
    for r in rows:
        seen += [d for d in r.get("projected_decode_tokens_per_s") or {} if d not in seen]
    return seen


def picks(rows: list[dict[str, Any]], ppl_budget: float) -> list[Pick]:
    """One Pick per target device of the run."""
    base_ppl = rows[0].get("ppl") if rows else None
    return [_pick(rows, device, base_ppl, ppl_budget) for device in devices(rows)]


def _pick(rows: list[dict[str, Any]], device: str, base_ppl: float | None, ppl_budget: float) -> Pick:
    procs = processors(device)
    running = [(r, rt) for r in rows if (rt := Runtime.of(r)) is not None and runs_on(rt, device)]
    unmeasured = [option(r, rt, device) for r, rt in running if not is_measured_row(r)]
    fits = [option(r, rt, device) for r, rt in running
            if is_measured_row(r) and within_budget(r, base_ppl, ppl_budget)]
    fits = [o for o in fits if o.tokens_per_s is not None]
    if not fits:
        why = (f"no measured artifact that runs on {device} ({', '.join(procs) or 'unknown processors'}) "
               f"has perplexity within {ppl_budget:.2f}x the base's" if running else
               f"no artifact of this run declares a runtime that runs on {device} ({', '.join(procs)})")
        return Pick(device, procs, None, why, unmeasured)
    best = max(fits, key=lambda o: (o.runtime.deploys, o.tokens_per_s, -(o.row.get("bytes_on_disk") or 0)))
    return Pick(device, procs, best, _why(best, fits, rows[0], device, ppl_budget), unmeasured)


def _why(best: Option, fits: list[Option], base: dict[str, Any], device: str, ppl_budget: float) -> str:
    how = "measured" if best.measured else "projected"
    on = " / ".join(runs_on(best.runtime, device))
    budget = f"within {ppl_budget:.2f}x the base's perplexity"
    why = f"{best.runtime.name} runs it on the {on}; " + (
        f"the fastest {how} decode of the {len(fits)} artifacts that run on {device} {budget}" if len(fits) > 1
        else f"the only artifact that runs on {device} {budget} ({how} decode)")
    if not best.runtime.deploys:
        why += " (no export in this run runs there within the budget)"
    base_speed = option(base, TORCH, device).tokens_per_s
    if best.row is not base and base_speed and best.tokens_per_s:
        why += f"; {best.tokens_per_s / base_speed:.2f}x the base's tokens/s"
        if best.row.get("bytes_on_disk") and base.get("bytes_on_disk"):
            smaller = base["bytes_on_disk"] / best.row["bytes_on_disk"]
            why += f", {smaller:.2f}x smaller" if smaller >= 1 else f", {1 / smaller:.2f}x larger"
    faster = [o for o in fits if not o.runtime.deploys and (o.tokens_per_s or 0) > (best.tokens_per_s or 0)]
    if best.runtime.deploys and faster:  # a PyTorch dir that projects faster is not what a device runs
        why += f" ({faster[0].row['step']}, a PyTorch model dir, projects faster but is no deployment runtime)"
    return why


def not_measured_text(row: dict[str, Any]) -> str:
    """"not measured here (engine is built on the device)": the reason the row's runtime declares."""
    runtime = Runtime.of(row)
    reason = runtime.unmeasured_reason if runtime is not None else row.get("status", "")
    return "not measured here" + (f" ({reason})" if reason else "")


def unmeasured_note(o: Option, ship: Option | None) -> str:
    """Why an artifact that runs on the device has no measurement, and how its projection compares."""
    note = not_measured_text(o.row)
    if ship is not None and o.tokens_per_s and ship.tokens_per_s and not ship.measured:
        note += f"; projected {o.tokens_per_s / ship.tokens_per_s:.2f}x the pick's projection"
    return note + "; its perplexity is measured where it runs"
