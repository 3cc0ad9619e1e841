"""What a training step computes in: fp32, or autocast to bf16 (CPUs with AVX512-BF16 / AMX, CUDA) or
fp16 (CUDA), decided once from a step's `amp` and the device, and recorded in step.json."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 matmuls


def cpu_bf16_flags() -> list[str]:
    """The bf16 flags this CPU reports (Linux /proc/cpuinfo; empty elsewhere or when it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in CPU_BF16_FLAGS if f in flags]
    except OSError:
        pass
    return []


@dataclass(frozen=True)
class Precision:
    """What a training step computes in: fp32, or autocast to `dtype`. `name` and `why` go in step.json."""

    dtype: torch.dtype | None  # the autocast dtype; None: fp32 throughout
    name: str  # "fp32", "bf16-autocast", "fp16-autocast"
    why: str  # how the plan's `amp` and this device gave it

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def record(self) -> dict[str, str]:
        return {"precision": self.name, "precision_why": self.why}


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The precision of a step's `amp` ("auto", "bf16", "fp16", "off") on `device`.

    auto: bf16 autocast on CUDA, fp32 on CPU (docs/training.md: bf16 was not faster there at equal
    quality). bf16 on CPU: autocast where the CPU has native bf16 (AVX512-BF16 / AMX), else fp32 with
    the reason recorded. fp16 is CUDA only (CPU: fp32)."""
    if amp == "off":
        return Precision(None, "fp32", "amp: off")
    if device.type == "cuda":
        dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        return Precision(dtype, f"{'fp16' if dtype == torch.float16 else 'bf16'}-autocast", f"amp: {amp} on CUDA")
    if amp == "auto":
        return Precision(None, "fp32", "amp: auto trains in fp32 on CPU; set amp: bf16 for bf16 autocast")
    if amp == "fp16":
        return Precision(None, "fp32", "amp: fp16 is for CUDA; CPU trains in fp32")
    flags = cpu_bf16_flags()
    if flags:
        return Precision(torch.bfloat16, "bf16-autocast", f"amp: bf16 on a CPU with {', '.join(flags)}")
    return Precision(None, "fp32", "amp: bf16, but this CPU has no avx512_bf16 or amx_bf16: fell back to fp32")


@contextmanager
def fused_gelu(*modules: nn.Module) -> Iterator[None]:
    """Run GPT-2's `gelu_new` as torch's fused tanh GELU inside `modules` for the duration: the same
    formula (within 3e-7), one kernel instead of the Python formula's five elementwise ops, which took
    ~11% of a 4x256 model's training step on CPU. The saved model keeps `gelu_new`: it is restored after."""
    from transformers.activations import ACT2FN

    formula = type(ACT2FN["gelu_new"])
    swapped = []
    for module in modules:
        for parent in module.modules():
            for name, child in parent.named_children():
                if type(child) is formula:
                    swapped.append((parent, name, child))
                    setattr(parent, name, ACT2FN["gelu_pytorch_tanh"])
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
