"""AWQ (Lin et al., 2023): activation-aware weight quantization, on the rtn integer grid.

The weights that matter are the ones multiplied by large activations. Scaling input channel j of a
layer's weight up by s_j (and its input down by s_j, folded into the op before it: folding.py) leaves
the fp32 function unchanged, but shrinks the relative rounding error of the channels with large s_j.
Per layer, s = mean|x|**alpha with alpha searched on a grid in [0, 1) for the smallest output error of
the quantized layer on calibration inputs; alpha = 0 is plain round-to-nearest, so the search never
does worse than rtn on the calibration set. Then (clip: true) each group's clipping range is searched
too: max|w| shrunk by up to half, for the smallest error of that group's partial output.

The output error of a weight error dW [out, in] over calibration inputs x is
    mean_x |x @ dW.T|^2 = sum_o dW_o H dW_o^T,   H = mean x^T x  [in, in]
so each candidate costs one product with H (gathered once, like GPTQ's), not a pass over the data.

Where s is folded, per block:
    attn.c_attn (q|k|v)  <- ln_1          mlp.c_fc <- ln_2
    attn.c_proj          <- the value outputs of c_attn
    mlp.c_proj follows a GELU: no scale, clipping only.
The LM head is rounded to nearest (a tied head's input scale would change the token lookup).
Scales are folded into stock GPT-2 modules, so the model is stored and exported like rtn/gptq.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from compress.quantization.calibration import capture_block_inputs, input_hooks, run_block
from compress.quantization.folding import fold_into_layernorm, fold_into_values
from compress.quantization.gptq import HessianSum
from compress.quantization.module_precision import FLOAT_BITS
from compress.quantization.modules import BLOCK_LINEARS, install, linear_weight
from compress.quantization.rtn import rtn, rtn_head

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

log = logging.getLogger(__name__)

GridOf = Callable[[str], tuple[int, "int | None"]]  # a block's layer ('mlp.c_fc') -> (bits, group_size)
CLIP_GRID, MAX_SHRINK = 20, 0.5  # clipping candidates max|w| * (1 - i/20), i < 10 (as the paper's code)

# The scaled layers of a block and how their input scale is folded (the block, s) -> None.
FOLDS: dict[str, Callable[[nn.Module, torch.Tensor], None]] = {
    "attn.c_attn": lambda block, s: fold_into_layernorm(block.ln_1, block.attn.c_attn, s),
    "attn.c_proj": lambda block, s: fold_into_values(block.attn.c_attn, block.attn.c_proj, s),
    "mlp.c_fc": lambda block, s: fold_into_layernorm(block.ln_2, block.mlp.c_fc, s),
}


class InputStats:
    """Per layer: H = mean x^T x and mean |x| per input channel over every calibration token."""

    def __init__(self):
        self.hessians = HessianSum()
        self.abs_sum: dict[str, torch.Tensor] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        self.hessians.add(name, x)
        a = x.reshape(-1, x.shape[-1]).abs().double().sum(dim=0)  # (in,)
        self.abs_sum[name] = self.abs_sum[name] + a if name in self.abs_sum else a

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(H [in, in], mean |x| [in]) as fp32 on CPU."""
        return self.hessians.get(name), (self.abs_sum[name] / self.hessians.n[name]).float().cpu()


def output_error(dw: torch.Tensor, H: torch.Tensor) -> float:
    """Mean squared output error of the weight error dw [out, in] on inputs with second moment H."""
    return float(((dw @ H) * dw).sum()) / dw.shape[0]


def fake_quant(w: torch.Tensor, bits: int, group: int | None, sym: bool) -> torch.Tensor:
    """w [out, in] rounded to the rtn grid and back."""
    return rtn("", w, None, bits, group, sym).dequantize()


def search_scale(w: torch.Tensor, H: torch.Tensor, x_mean: torch.Tensor, bits: int, group: int | None,
                 sym: bool, grid: int) -> tuple[torch.Tensor, float, float]:
    """The input-channel scale s [in] of w [out, in] with the smallest quantized output error.

    Returns (s, error of plain rtn, error with s)."""
    best_s, best_err, rtn_err = torch.ones_like(x_mean), float("inf"), float("nan")
    for k in range(grid):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centred around 1, so the weights keep their scale
        err = output_error(fake_quant(w * s, bits, group, sym) / s - w, H)  # w * s scales input columns
        if k == 0:
            rtn_err = err
        if err < best_err:
            best_s, best_err = s, err
    return best_s, rtn_err, best_err


def search_clip(w: torch.Tensor, H: torch.Tensor, bits: int, group: int | None, sym: bool) -> torch.Tensor:
    """Per (output row, group) clipping bound of w [out, in] -> [out, n_groups], for the smallest error
    of each group's partial output (the group's diagonal block of H)."""
    out_f, in_f = w.shape
    G = group or in_f
    n = in_f // G
    wg = w.view(out_f, n, G)
    Hg = torch.stack([H[g * G:(g + 1) * G, g * G:(g + 1) * G] for g in range(n)])  # (n, G, G)
    amax = wg.abs().amax(dim=-1)  # (out, n)
    best, best_err = amax.clone(), torch.full_like(amax, float("inf"))
    for i in range(int(MAX_SHRINK * CLIP_GRID)):
        bound = amax * (1 - i / CLIP_GRID)
        clipped = torch.maximum(torch.minimum(wg, bound.unsqueeze(-1)), -bound.unsqueeze(-1))
        d = fake_quant(clipped.view(out_f, in_f), bits, group, sym).view(out_f, n, G) - wg
        err = torch.einsum("ong,ngh,onh->on", d, Hg, d)
        better = err < best_err
        best, best_err = torch.where(better, bound, best), torch.where(better, err, best_err)
    return best


def clip_weight(w: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """w [out, in] clamped to +-bound [out, n_groups] group by group."""
    out_f, in_f = w.shape
    b = bound.repeat_interleave(in_f // bound.shape[1], dim=1)  # (out, in)
    return torch.maximum(torch.minimum(w, b), -b)


@torch.no_grad()
def scale_block(block: nn.Module, stats: InputStats, grid_of: GridOf, sym: bool,
                grid: int) -> dict[str, tuple[float, float]]:
    """Search and fold the input scales of one block's scaled layers (fp32 function unchanged), each
    for its own grid_of(local) = (bits, group); a layer kept float (bits 16) is not scaled.

    Returns {layer: (rtn error, awq error)} of the calibration outputs; `stats` is left describing the
    scaled inputs (x / s)."""
    errors = {}
    for local, fold in FOLDS.items():
        bits, group = grid_of(local)
        if bits == FLOAT_BITS:
            continue
        w = linear_weight(block.get_submodule(local))[0].cpu()  # searched on CPU, beside the statistics
        H, x_mean = stats.get(local)
        s, rtn_err, best_err = search_scale(w, H, x_mean, bits, group, sym, grid)
        fold(block, s)
        # The layer's inputs are now x / s: so are their statistics.
        stats.hessians.H[local] /= torch.outer(s, s).to(stats.hessians.H[local])
        stats.abs_sum[local] /= s.to(stats.abs_sum[local])
        errors[local] = (rtn_err, best_err)
    return errors


@torch.no_grad()
def scale_model(model: GPT2LMHeadModel, windows: torch.Tensor, precision_of: Callable[[str], tuple[int, int | None]],
                sym: bool, grid: int, on_block: Callable[[int, nn.Module, InputStats], None] | None = None) -> None:
    """Fold AWQ scales into every block, in place (nothing is quantized; the fp32 outputs stay the same).

    Block by block on calibration windows; `on_block(i, block, stats)` runs after block i is scaled,
    before its (fp32) outputs become block i+1's inputs."""
    calls = capture_block_inputs(model, windows)
    for i, block in enumerate(model.transformer.h):
        stats = InputStats()
        with input_hooks({n: block.get_submodule(n) for n in BLOCK_LINEARS}, stats.add):
            run_block(block, calls)
        errors = scale_block(block, stats, lambda local: precision_of(f"transformer.h.{i}.{local}"), sym, grid)
        log.info("awq: block %d/%d scaled, output error rtn -> awq: %s", i + 1, model.config.n_layer,
                 ", ".join(f"{n} {a:.3g} -> {b:.3g}" for n, (a, b) in errors.items()))
        if on_block:
            on_block(i, block, stats)
        calls = run_block(block, calls)


def run_awq(model: GPT2LMHeadModel, cfg: QuantizeConfig, windows: torch.Tensor) -> GPT2LMHeadModel:
    sym = cfg.sym
    records = {}

    def quantize_block(i: int, block: nn.Module, stats: InputStats) -> None:
        for local in BLOCK_LINEARS:
            bits, group = cfg.precision_of(f"transformer.h.{i}.{local}")
            if bits == FLOAT_BITS:
                continue
            w, bias = linear_weight(block.get_submodule(local))
            w = w.cpu()  # beside the statistics
            if cfg.clip:
                w = clip_weight(w, search_clip(w, stats.get(local)[0], bits, group, sym))
            name = f"transformer.h.{i}.{local}"
            records[name] = rtn(name, w, bias, bits, group, sym)

    scale_model(model, windows, cfg.precision_of, sym, cfg.search_grid, on_block=quantize_block)
    return install(model, records | rtn_head(model, cfg))
