"""Activation outliers of a GPT-2: measure them, and plant them (function-preserving) to make a hard copy.

Real GPT-2 has a few residual channels whose LayerNorm outputs are tens to hundreds of times larger
than the rest; quantizing a projection's input per tensor (one int8 scale for all channels) then
leaves the ordinary channels a handful of levels. `outlier_profile` measures, per block and per
projection input, the per-channel max |x| over calibration windows:

    h.i.attn.c_attn  <- ln_1 output          h.i.mlp.c_fc    <- ln_2 output
    h.i.attn.c_proj  <- attention output     h.i.mlp.c_proj  <- GELU output

and the LM head's input (ln_f output, layer "lm_head"), and reports max/median over channels (the
"310x" of a diagnostic) and the top channels.

`plant_outliers` multiplies ln_1/ln_2's gamma and beta on chosen residual channels by a factor and
divides the matching input rows of attn.c_attn / mlp.c_fc (Conv1D weight is [in, out]) by it: the
fp32 function is unchanged, the LayerNorm outputs get GPT-2-like outliers. `mimic_spec` chooses the
channels and factors that give a model the outlier ratios measured on another one.

Measuring only: nothing here imports compress/ or export/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

# Projection inputs of one block, in data-flow order, and what produces each.
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
PRODUCERS = {"attn.c_attn": "ln_1", "attn.c_proj": "attention", "mlp.c_fc": "ln_2", "mlp.c_proj": "gelu"}
# The projections a planted LayerNorm outlier feeds: (LayerNorm, projection) per block.
LN_FED = (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc"))
BATCH = 8  # windows per forward pass
TOP = 8  # channels listed per input


@dataclass
class InputProfile:
    """Per-channel max |x| of one projection input over the calibration windows."""

    layer: str  # "h.3.mlp.c_fc"
    absmax: torch.Tensor  # (in_features,)

    @property
    def median(self) -> float:
        return float(self.absmax.median())

    @property
    def ratio(self) -> float:
        """max over channels / median over channels of the per-channel max |x|."""
        return float(self.absmax.max()) / max(self.median, 1e-12)

    def top(self, k: int = TOP) -> list[tuple[int, float]]:
        """The k largest channels as (index, max |x| / median), largest first."""
        values, idx = self.absmax.topk(min(k, self.absmax.numel()))
        med = max(self.median, 1e-12)
        return [(int(i), float(v) / med) for v, i in zip(values, idx)]

    def as_dict(self) -> dict:
        return {"max_over_median": round(self.ratio, 2), "max": float(self.absmax.max()),
                "median": self.median, "top_channels": [[i, round(r, 2)] for i, r in self.top()]}

    def describe(self) -> str:
        return f"{self.layer} input: max/median {self.ratio:.{0 if self.ratio >= 10 else 1}f}x"


@dataclass
class OutlierProfile:
    """Every projection input of a model; `layers` in block order."""

    layers: dict[str, InputProfile]
    tokens: int  # calibration tokens seen

    @property
    def n_blocks(self) -> int:
        return 1 + max(int(n.split(".")[1]) for n in self.layers if n.startswith("h."))

    def worst(self, projections: Iterable[str] = PROJECTIONS + ("lm_head",)) -> InputProfile:
        """The input with the largest max/median among the given kinds ("mlp.c_fc", ..., "lm_head")."""
        kinds = tuple(projections)
        return max((p for p in self.layers.values() if kind_of(p.layer) in kinds), key=lambda p: p.ratio)

    def as_dict(self) -> dict:
        worst = self.worst()
        return {"tokens": self.tokens, "worst": worst.describe(),
                "inputs": {name: p.as_dict() for name, p in self.layers.items()}}


def kind_of(layer: str) -> str:
    """'h.3.mlp.c_fc' -> 'mlp.c_fc'; 'lm_head' -> 'lm_head'."""
    return layer.split(".", 2)[2] if layer.startswith("h.") else layer


def _windows(ids: torch.Tensor, seq_len: int, max_windows: int | None) -> torch.Tensor:
    """(N, T) windows as given, or consecutive windows of seq_len cut from a 1-D stream."""
    if ids.dim() == 2:
        return ids[:max_windows]
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"outlier_profile needs at least {seq_len} tokens, got {ids.numel()}")
    return ids[: n * seq_len].view(n, seq_len)[:max_windows]


@torch.no_grad()
def outlier_profile(model: nn.Module, ids: torch.Tensor, seq_len: int = 256,
                    max_windows: int | None = 64) -> OutlierProfile:
    """Per-channel max |x| of every block projection's input, over windows of `ids`.

    `ids`: (N, T) windows, or a 1-D token stream cut into consecutive windows of `seq_len` (capped at
    n_positions). Works on fp32 and on quantized models (the projections keep their module paths).
    """
    body = getattr(model, "transformer", model)
    seq_len = min(seq_len, int(getattr(model.config, "n_positions", seq_len)))
    windows = _windows(ids, seq_len, max_windows)
    amax: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        m = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()  # (in,)
        amax[name] = torch.maximum(amax[name], m) if name in amax else m

    handles = []
    for i, block in enumerate(body.h):
        for proj in PROJECTIONS:
            hook = (lambda mod, args, n=f"h.{i}.{proj}": observe(n, args[0]))
            handles.append(block.get_submodule(proj).register_forward_pre_hook(hook))
    handles.append(body.ln_f.register_forward_hook(lambda mod, args, out: observe("lm_head", out)))
    device = body.wte.weight.device
    try:
        for batch in windows.split(BATCH):
            body(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    layers = {name: InputProfile(name, amax[name]) for name in amax}
    return OutlierProfile(layers, tokens=windows.numel())


# -- planting outliers -------------------------------------------------------------------------------

PlantSpec = Mapping[int, Mapping[int, float]]  # block -> {residual channel: factor}


@torch.no_grad()
def plant_spec(model: nn.Module, spec: PlantSpec) -> nn.Module:
    """Scale ln_1/ln_2 gamma and beta of block b on channel c by spec[b][c], and divide the input row c
    of attn.c_attn / mlp.c_fc by it, in place: the fp32 function is unchanged."""
    blocks = getattr(model, "transformer", model).h
    for b, channels in spec.items():
        if not 0 <= b < len(blocks):
            raise ValueError(f"plant_outliers: block {b} out of range (model has {len(blocks)})")
        for ln_name, proj in LN_FED:
            ln, conv = blocks[b].get_submodule(ln_name), blocks[b].get_submodule(proj)
            width = ln.weight.numel()
            for c, f in channels.items():
                if not 0 <= c < width:
                    raise ValueError(f"plant_outliers: channel {c} out of range (width {width})")
                if not f > 0:
                    raise ValueError(f"plant_outliers: factor must be > 0, got {f}")
                ln.weight[c] *= f
                ln.bias[c] *= f
                conv.weight[c, :] /= f  # Conv1D weight is (in, out): input channel c is row c
    return model


def plant_outliers(model: nn.Module, channels: Sequence[int], factor: float,
                   blocks: Iterable[int] | None = None) -> nn.Module:
    """Plant outliers of `factor` in the same residual `channels` of every block (or of `blocks`)."""
    n_layer = len(getattr(model, "transformer", model).h)
    chosen = range(n_layer) if blocks is None else blocks
    return plant_spec(model, {b: {int(c): float(factor) for c in channels} for b in chosen})


def mimic_spec(target: OutlierProfile, current: OutlierProfile, k: int = 4) -> dict[int, dict[int, float]]:
    """Channels and factors that give the model measured by `current` the ln_1-output outlier ratios
    of `target` (e.g. a real GPT-2's): block b of `current` takes block round(b * L_t / L_c) of
    `target`; its own k largest ln_1-output channels are raised so that their max/median becomes the
    target's rank-1..k ratios (a channel already above its target is left as it is, factor 1)."""
    n_cur, n_tgt = current.n_blocks, target.n_blocks
    spec: dict[int, dict[int, float]] = {}
    for b in range(n_cur):
        tb = min(n_tgt - 1, round(b * n_tgt / n_cur))
        wanted = [r for _, r in target.layers[f"h.{tb}.attn.c_attn"].top(k)]
        own = current.layers[f"h.{b}.attn.c_attn"]
        spec[b] = {c: max(1.0, want / have) for (c, have), want in zip(own.top(k), wanted)}
    return spec
