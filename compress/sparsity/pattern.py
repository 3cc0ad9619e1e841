"""Sparsity targets, masks, and measuring the sparsity a model holds.

Weights are in nn.Linear orientation [out, in] (GPT-2's Conv1D stores [in, out]; `block_weights`
transposes). An N:M pattern keeps N of every M consecutive weights along the input dimension (the
reduction dimension of the matmul), which is the layout NVIDIA's sparse tensor cores (TensorRT's
SPARSE_WEIGHTS, 2:4) need. Unstructured targets prune the same count in every output row, so the
measured sparsity of a matrix is round(fraction * in) / in exactly.

The sparsify step records what it did in config.json under CONFIG_KEY; the quantize step reads it
(GPTQ then keeps the zeros) and the export step measures the weights themselves (`model_pattern`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # the plan's configs read PROJECTIONS, Target, parse_pattern: no torch at plan time
    import torch
    from torch import nn

CONFIG_KEY = "gpt2_edge_sparsity"  # config.json entry written by the sparsify step
PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # never lm_head / wte


def parse_pattern(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4); ValueError with the rule otherwise."""
    m = PATTERN.match(text)
    if not m:
        raise ValueError(f"pattern {text!r} is not N:M (e.g. 2:4: N weights kept of every M consecutive inputs)")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        why = "keeps every weight" if n >= mm else "keeps none"
        raise ValueError(f"pattern {text}: needs 0 < N < M (N weights kept of every M consecutive inputs; "
                         f"{n}:{mm} {why})")
    if mm > 64:
        raise ValueError(f"pattern {text}: M is at most 64")
    return n, mm


@dataclass(frozen=True)
class Target:
    """What to prune in each matrix: a fraction per output row, or N kept of every M along the input."""

    fraction: float  # zeros per matrix (1 - n/m for a pattern)
    n: int | None = None
    m: int | None = None

    @classmethod
    def of(cls, sparsity: float | None, pattern: str | None) -> "Target":
        if pattern is not None:
            n, m = parse_pattern(pattern)
            return cls(1 - n / m, n, m)
        return cls(float(sparsity))

    @property
    def pattern(self) -> str | None:
        return f"{self.n}:{self.m}" if self.m else None

    def pruned_per_row(self, width: int) -> int:
        """Weights pruned in one output row of `width` inputs (unstructured)."""
        return int(round(self.fraction * width))

    def describe(self) -> str:
        return self.pattern or f"{self.fraction:.0%} unstructured"


def select_keep(scores: torch.Tensor, target: Target) -> torch.Tensor:
    """Boolean keep-mask [out, in] that keeps the largest scores: per M-group (N of them) for a pattern,
    per output row (in - round(fraction * in) of them) otherwise."""
    import torch

    out_f, in_f = scores.shape
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if target.m:
        groups = scores.reshape(out_f, in_f // target.m, target.m)
        idx = torch.topk(groups, target.n, dim=2).indices
        return keep.view(out_f, in_f // target.m, target.m).scatter_(2, idx, True).view(out_f, in_f)
    k = target.pruned_per_row(in_f)
    if k == 0:
        return ~keep
    idx = torch.topk(scores, k, dim=1, largest=False).indices
    return (~keep).scatter_(1, idx, False)


def holds(w: torch.Tensor, n: int, m: int) -> bool:
    """Whether w [out, in] has at most n non-zeros in every m consecutive inputs of every row."""
    out_f, in_f = w.shape
    if in_f % m:
        return False
    return bool(((w != 0).reshape(out_f, in_f // m, m).sum(dim=2) <= n).all())


def measure(w: torch.Tensor, expected: str | None = None) -> dict[str, Any]:
    """{sparsity, pattern}: the fraction of exact zeros, and `expected` ('3:4') when it holds, else the
    tightest N:4 / N:8 pattern with N <= M/2 that holds (None: unstructured; a looser one such as 7:8
    holds by chance in a 50% unstructured matrix)."""
    zeros = float((w == 0).sum()) / w.numel()
    candidates = ([expected] if expected else []) + [f"{n}:{m}" for m in (4, 8) for n in range(1, m // 2 + 1)]
    pattern = next((p for p in candidates if holds(w, *parse_pattern(p))), None)
    return {"sparsity": round(zeros, 6), "pattern": pattern}


def weight_of(module: nn.Module) -> torch.Tensor:
    """The fp32 weight [out, in] of a Conv1D, nn.Linear, or quantized linear (dequantized codes)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return module.weight.detach().t().float()
    if isinstance(module, nn.Linear):
        return module.weight.detach().float()
    if hasattr(module, "record"):  # compress.quantization.modules.QuantLinear
        return module.record().dequantize()
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def set_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Write w [out, in] into a Conv1D ([in, out]) or nn.Linear, in place."""
    import torch
    from transformers.pytorch_utils import Conv1D

    with torch.no_grad():
        target = module.weight
        target.copy_((w.t() if isinstance(module, Conv1D) else w).to(target.dtype))


def block_weights(model: nn.Module, layers: tuple[str, ...] = PROJECTIONS) -> Iterator[tuple[str, torch.Tensor]]:
    """(module path, weight [out, in]) of the chosen projections of every block."""
    for i, block in enumerate(model.transformer.h):
        for local in layers:
            yield f"transformer.h.{i}.{local}", weight_of(block.get_submodule(local))


def model_pattern(model: nn.Module) -> str | None:
    """'2:4' when every block projection holds 2:4 (what TensorRT's sparse weights need), else None (also for
    a factorized model: its projections are pairs of factors, compress.lowrank, never sparsified)."""
    from compress.lowrank.modules import LowRankLinear, LowRankPair

    if any(isinstance(m, (LowRankLinear, LowRankPair)) for m in model.modules()):
        return None
    ws = [w for _, w in block_weights(model)]
    return "2:4" if ws and all(holds(w, 2, 4) for w in ws) else None


def sparsity_record(config: Any) -> dict[str, Any] | None:
    """The sparsify step's record in a model config (GPT2Config or config.json dict), or None."""
    value = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    return value if isinstance(value, dict) else None


def drop_sparsity_record(config: Any) -> bool:
    """Remove the sparsify step's record from a GPT2Config (a step that trains or replaces the weights
    would leave it claiming a pattern the weights no longer hold); True when there was one."""
    if sparsity_record(config) is None:
        return False
    delattr(config, CONFIG_KEY)
    return True
