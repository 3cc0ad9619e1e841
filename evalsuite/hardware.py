"""Target devices and the memory-bandwidth roofline for decode.

Decoding one token reads every weight once (except embedding tables, of which it looks up one row)
and the whole KV cache once, so on any device
    decode tokens/s <= memory bandwidth / (weight bytes read + KV-cache bytes read per token).
The result is a "projected" upper bound, reported next to (never mixed with) measured figures. On
the host, where both exist, measured / projected says how far a real runtime sits from the limit.

Catalog numbers are the vendors' published peak figures (GB/s = 1e9 bytes/s):
- Jetson Orin modules: NVIDIA "Jetson Orin Nano Series", "Jetson Orin NX Series" and "Jetson AGX
  Orin Series" data sheets and the "Jetson AGX Orin Series Technical Brief" (developer.nvidia.com/
  embedded/jetson-modules): LPDDR5 bandwidth and module INT8 TOPS, which NVIDIA gives with
  structured sparsity and, on NX/AGX, with the DLAs included (AGX Orin 64GB: GPU 170 + 2 DLA 105).
  The original (JetPack 5) clocks are listed; JetPack 6.2 "Super" mode raises Orin Nano to
  102 GB/s / 67 TOPS and Orin NX to 157 TOPS. NVIDIA's Jetson data sheets publish no FP16 tensor
  figure (they give INT8 TOPS and FP32 CUDA-core TFLOPS), so fp16_tflops is None there; Ampere
  tensor cores run FP16 at half their INT8 rate, which is a derivation, not a published number.
- H100 SXM5 / H200 SXM: NVIDIA H100 and H200 Tensor Core GPU data sheets: 3.35 TB/s HBM3 and
  4.8 TB/s HBM3e; FP16 tensor 989.5 TFLOPS and INT8 1979 TOPS dense (the sheets' headline figures,
  1979 / 3958, are with sparsity).
- host: this machine, bandwidth measured by `measure_host_bandwidth` (a large array copy, counted
  as bytes read + bytes written, as STREAM's "copy" does).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


# The processors a target device offers an artifact's runtime (an export target declares which of these
# its runtime runs on: evalsuite.deployment.Runtime.runs_on).
CPU, NVIDIA_GPU = "cpu", "nvidia-gpu"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    memory_bandwidth_gb_s: float  # GB/s = 1e9 bytes/s
    memory_gb: float
    int8_tops: float | None  # peak, as published (sparse where the vendor only gives sparse)
    fp16_tflops: float | None  # peak dense FP16 tensor throughput; None where none is published
    source: str
    # Processors that read the memory whose bandwidth the projection uses: a Jetson's CPU and GPU share
    # its LPDDR5; an H100's HBM serves its GPU only; the host is this machine's CPU.
    processors: tuple[str, ...] = (CPU, NVIDIA_GPU)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("orin-nano", "Jetson Orin Nano 8GB", 68.0, 8, 40.0, None,
           "Jetson Orin Nano Series data sheet: 68 GB/s LPDDR5, 40 INT8 TOPS (sparse); no FP16 figure published"),
    Target("orin-nx", "Jetson Orin NX 16GB", 102.4, 16, 100.0, None,
           "Jetson Orin NX Series data sheet: 102.4 GB/s LPDDR5, 100 INT8 TOPS (sparse, GPU + DLA); "
           "no FP16 figure published"),
    Target("agx-orin", "Jetson AGX Orin 64GB", 204.8, 64, 275.0, None,
           "Jetson AGX Orin Series data sheet / technical brief: 204.8 GB/s LPDDR5, 275 INT8 TOPS "
           "(sparse, GPU 170 + DLA 105), 5.3 FP32 TFLOPS; no FP16 figure published"),
    Target("h100", "NVIDIA H100 SXM5 80GB", 3350.0, 80, 1979.0, 989.5,
           "H100 Tensor Core GPU data sheet: 3.35 TB/s HBM3, dense FP16 989.5 TFLOPS, INT8 1979 TOPS",
           (NVIDIA_GPU,)),
    Target("h200", "NVIDIA H200 SXM 141GB", 4800.0, 141, 1979.0, 989.5,
           "H200 Tensor Core GPU data sheet: 4.8 TB/s HBM3e, same compute as H100 SXM", (NVIDIA_GPU,)),
)}
HOST = "host"
KNOWN_TARGETS = (*TARGETS, HOST)


@lru_cache(maxsize=1)
def measure_host_bandwidth(n_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """This machine's copy bandwidth in GB/s (bytes read + bytes written per second), best of N."""
    import numpy as np  # here, not at the top: the plan reads the target catalog without numpy

    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


@lru_cache(maxsize=1)
def host_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This machine's CPU for a results file: /proc/cpuinfo's model name, family/model and its widest
    vector ISA ("AMD EPYC (family 25, model 17), AVX-512 + VNNI"), since VMs differ 2-4x on one plan."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux: what platform knows
        return platform.processor() or platform.machine()
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if not key.strip() and info:
            break  # the first processor's block is enough
        info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    isa = ("AVX-512" + (" + VNNI" if "avx512_vnni" in flags else "") + (" + AMX" if "amx_tile" in flags else "")
           if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    return (f"{info.get('model name', platform.machine())} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}), {isa}")


def host_target() -> Target:
    return Target(HOST, f"this machine ({platform.machine()})", measure_host_bandwidth(), 0, None, None,
                  "measured here: numpy copy of 256 MiB, best of 5, read + write bytes", (CPU,))


def processors(name: str) -> tuple[str, ...]:
    """The processors of a target device, without measuring the host's bandwidth."""
    return (CPU,) if name == HOST else TARGETS[name].processors if name in TARGETS else ()


def target(name: str) -> Target:
    if name == HOST:
        return host_target()
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r} (known: {', '.join(KNOWN_TARGETS)})")
    return TARGETS[name]


def kv_bytes_per_token(n_layer: int, n_embd: int, context: int, bytes_per_elem: int = 2) -> int:
    """KV-cache bytes read to decode one token at `context` cached positions (K and V, every layer)."""
    return 2 * n_layer * context * n_embd * bytes_per_elem


def projected_decode_tokens_per_s(bandwidth_gb_s: float, weight_bytes: int, kv_bytes: int, batch: int = 1) -> float:
    """Roofline bound on decode tokens/s: one pass over weights serves the batch; KV is per sequence."""
    return batch * bandwidth_gb_s * 1e9 / (weight_bytes + batch * kv_bytes)


def roofline_fraction(measured_tokens_per_s: float | None, projected_tokens_per_s: float | None) -> float | None:
    """measured / projected: 1.0 means the runtime streams memory at the device's full bandwidth."""
    if not measured_tokens_per_s or not projected_tokens_per_s:
        return None
    return measured_tokens_per_s / projected_tokens_per_s
