"""Quantization-aware training through the quantize step's own grid, distilling from a teacher.

Each quantized block projection (QuantLinear: codes q, scales s0, zero points z per group) becomes a
FakeQuantLinear with a latent fp32 weight W, started at the dequantized codes (q - z) * s0, so the
first forward is exactly the quantized model's. Its forward uses

    Wq = (clamp(round(W / s0) + z, 0, 2**bits - 1) - z) * s,    s = s0 * exp(log_scale)

with a straight-through estimator (round passes the gradient unchanged; clamp passes it only inside
the grid's range), and W8A8 layers also fake-quantize their input with their static input_scale, the
same way. W in units of the PTQ scale s0 picks the code; the scale s that multiplies it is either the
PTQ one (scales: frozen) or learned (scales: learned, the default: log_scale trains at its own lr,
starting at 0, with the codes' gradient (q - z) * dL/dWq; zero points stay). At the end the codes are
round(W / s0) + z, clamped, and the scales are that same fp32 s: every weight handed on is
(code - z) * scale on the stored grid, bit for bit the one the last forward used, and the model is
saved by the quantize step's own storage (compress.quantization.storage).

Biases and LayerNorms train too (they are fp32 in every layout); embeddings and a quantized LM head
stay as they are (a quantized tied head is also the token table).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from transformers import GPT2LMHeadModel

from compress.distillation.evaluate import heldout_eval
from compress.distillation.losses import ce_loss, kl_loss
from compress.errors import UserError
from compress.finetune.loop import Tuned
from compress.qat.config import QatConfig
from compress.quantization.handoff import LinearCodes, dequantize, fake_quant_input
from compress.quantization.modules import QuantLinear, block_linear_names, quant_linears, set_module
from compress.precision import fused_gelu, resolve_precision
from compress.training import LoopSpec, adamw, resume, sample_batch, train_loop


class FakeQuantLinear(nn.Module):
    """A QuantLinear whose weight (and, if learned, scales) train: forward through its grid, gradients
    straight through the rounding."""

    def __init__(self, layer: QuantLinear, learn_scales: bool = False):
        super().__init__()
        self.name, self.bits, self.group_size = layer.name, layer.bits, layer.group_size
        self.input_scale = layer.input_scale
        self.register_buffer("start_scales", layer.scales.clone())  # s0 (out, n_groups): W's code unit
        self.register_buffer("zeros", layer.zeros.clone())  # uint8 (out, n_groups)
        # log(s / s0), trained beside W when scales are learned; s = s0 exactly when they are not
        self.log_scale = nn.Parameter(torch.zeros_like(layer.scales)) if learn_scales else None
        self.weight = nn.Parameter(dequantize(layer.q, layer.scales, layer.zeros, layer.group_size))  # (out, in)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.clone())
        self.start_codes = layer.q.clone()  # a plain attribute (not state): how many codes training moved

    @property
    def scales(self) -> torch.Tensor:
        """The scales handed on: s0 * exp(log_scale), the same fp32 tensor the forward multiplies by."""
        return self.start_scales if self.log_scale is None else self.start_scales * torch.exp(self.log_scale)

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W grouped (out, n_groups, G), s0 and zeros broadcast to it (out, n_groups, 1))."""
        out_f, in_f = self.weight.shape
        w = self.weight.view(out_f, in_f // self.group_size, self.group_size)
        return w, self.start_scales.unsqueeze(-1), self.zeros.float().unsqueeze(-1)

    def codes(self) -> torch.Tensor:
        """The integer codes of the current weight: round(W / s0) + z in [0, 2**bits) -> uint8 (out, in)."""
        w, s0, z = self._grid()
        q = torch.clamp(torch.round(w.detach() / s0) + z, 0, 2 ** self.bits - 1)
        return q.reshape(self.weight.shape).to(torch.uint8)

    def quantized_weight(self) -> torch.Tensor:
        """(codes - z) * s = dequantize(codes(), scales): W in units of s0 picks the code, the (learned)
        scale s multiplies it, so the scale's gradient is (code - z) * dL/dWq (the codes' own, as in
        EfficientQAT's E2E-QP; LSQ's round(W/s) - W/s is 0 at the PTQ start, where W sits on the grid)."""
        w, s0, z = self._grid()
        lo, hi = (0 - z) * s0, (2 ** self.bits - 1 - z) * s0  # the grid's range, per group
        codes = torch.clamp(torch.round(w.detach() / s0) + z, 0, 2 ** self.bits - 1) - z  # = codes() - z
        u = torch.minimum(torch.maximum(w, lo), hi) / s0  # clamp: no gradient outside the range
        q = codes + (u - u.detach())  # straight through the rounding; its value is exactly the codes
        return (q * self.scales.unsqueeze(-1)).reshape(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x + (fake_quant_input(x, self.input_scale) - x).detach()
        return nn.functional.linear(x, self.quantized_weight().to(x.dtype),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def record(self) -> LinearCodes:
        return LinearCodes(self.name, self.bits, self.group_size, self.codes().cpu(),
                           self.scales.detach().clone().cpu(), self.zeros.cpu(),
                           None if self.bias is None else self.bias.detach().float().cpu(), self.input_scale)


def to_fake_quant(model: GPT2LMHeadModel, learn_scales: bool = False) -> dict[str, FakeQuantLinear]:
    """Swap every block QuantLinear for a FakeQuantLinear (in place); freeze what does not train."""
    blocks = set(block_linear_names(model))
    layers = {n: m for n, m in quant_linears(model).items() if n in blocks}
    if not layers:
        raise UserError("qat: the model has no quantized block projections of our grid (quantize it with rtn, "
                        "gptq, awq or smoothquant first)")
    model.requires_grad_(False)
    out = {}
    for name, layer in layers.items():
        out[name] = FakeQuantLinear(layer, learn_scales).to(layer.scales.device)
        set_module(model, name, out[name])
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    return out


def from_fake_quant(model: GPT2LMHeadModel, layers: dict[str, FakeQuantLinear]) -> int:
    """Put QuantLinears with the trained codes back (in place); the number of codes that changed."""
    changed = 0
    for name, layer in layers.items():
        record = layer.record()
        set_module(model, name, QuantLinear(record).to(layer.scales.device))
        changed += int(layer.start_codes.ne(record.q.to(layer.start_codes.device)).sum())
    return changed


@dataclass
class QatResult:
    steps: int
    tokens: int
    tokens_per_step: int
    stopped_early: bool
    tokens_per_s: float
    before: dict[str, float] | None  # held-out {ppl, kl, teacher_ppl} of the quantized model as it came
    after: dict[str, float] | None  # the same for the codes handed on
    best_step: int | None  # 0: no eval beat the codes it came with, which are handed on unchanged
    trainable_params: int
    codes_changed: int
    codes_total: int
    scales: str  # "learned" or "frozen"
    scale_change: float  # mean |s / s_ptq - 1| over every group's scale handed on (0 when frozen)
    precision: str
    precision_why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_qat(model: GPT2LMHeadModel, teacher: GPT2LMHeadModel, ids: torch.Tensor, cfg: QatConfig, seed: int = 0,
            checkpoint_dir: Path | None = None, tensorboard_dir: Path | None = None, progress: bool = True,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> tuple[GPT2LMHeadModel, QatResult]:
    """Train the quantized `model` through its grid toward `teacher` on the token stream `ids` (its last
    cfg.eval_tokens held out); returns the model with QuantLinears of the trained codes, and a QatResult."""
    if teacher.config.vocab_size != model.config.vocab_size:
        raise UserError(f"qat.teacher: its vocabulary ({teacher.config.vocab_size}) differs from the model's "
                        f"({model.config.vocab_size})")
    if cfg.seq_len > min(model.config.n_positions, teacher.config.n_positions):
        raise UserError(f"qat.seq_len ({cfg.seq_len}) exceeds the model's n_positions")
    need = cfg.eval_tokens + cfg.seq_len + 2
    if ids.numel() < need:
        raise UserError(f"qat: data.train has {ids.numel():,} tokens; seq_len + eval_tokens need {need:,}")
    train_ids, held_ids = (ids[: -cfg.eval_tokens], ids[-cfg.eval_tokens:]) if cfg.eval_tokens else (ids, None)
    device = next(model.parameters()).device
    teacher = teacher.to(device).eval().requires_grad_(False)
    layers = to_fake_quant(model, learn_scales=cfg.scales == "learned")
    module = Tuned(model.train())
    scale_params = [layer.log_scale for layer in layers.values() if layer.log_scale is not None]
    optimizer = adamw(module, cfg.lr, cfg.weight_decay, own_lr=((scale_params, cfg.scale_lr),) if scale_params else ())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    state, best = resume(module, optimizer, checkpoint_dir, "quantization-aware training")
    precision = resolve_precision(cfg.amp, device)

    def step_fn(step: int) -> dict[str, float]:
        sums = ({"kl": 0.0} if cfg.kl else {}) | ({"ce": 0.0} if cfg.ce else {})
        for m in range(cfg.grad_accum):
            batch = sample_batch(train_ids, cfg.batch_size, cfg.seq_len, seed, step * cfg.grad_accum + m).to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            with precision.autocast(device):
                with torch.no_grad():
                    t_logits = teacher(input_ids=x).logits if cfg.kl else None
                s_logits = model(input_ids=x).logits
            terms = {}
            if cfg.kl:
                terms["kl"] = kl_loss(s_logits.flatten(0, 1), t_logits.flatten(0, 1), cfg.temperature)
            if cfg.ce:
                terms["ce"] = ce_loss(s_logits.flatten(0, 1), y.flatten())
            loss = cfg.kl * terms.get("kl", 0.0) + cfg.ce * terms.get("ce", 0.0)
            (loss / cfg.grad_accum).backward()
            for k, v in terms.items():
                sums[k] += v.item() / cfg.grad_accum
        return sums

    evaluate = None
    if held_ids is not None:
        def evaluate() -> dict[str, float]:  # fp32, through the exact grid
            return heldout_eval(model, teacher, held_ids, cfg.seq_len)

    spec = LoopSpec.of("qat", cfg, cfg.tokens_per_step, math.ceil(cfg.tokens / cfg.tokens_per_step),
                       advice=f"lower lr (now {cfg.lr:g}) or raise warmup_steps, then rerun", keep_start=True)
    with fused_gelu(module, teacher):
        out = train_loop(module, optimizer, spec, step_fn, state, best, evaluate, checkpoint_dir, tensorboard_dir,
                         progress=progress, on_step=on_step)
    with torch.no_grad():
        ratios = torch.cat([(layer.scales / layer.start_scales - 1).abs().flatten() for layer in layers.values()])
    changed = from_fake_quant(model, layers)
    result = QatResult(steps=out.done, tokens=out.done * cfg.tokens_per_step, tokens_per_step=cfg.tokens_per_step,
                       stopped_early=out.stopped_early, tokens_per_s=out.tokens_per_s, before=state["before"],
                       after=state["after"], best_step=state["best_step"], trainable_params=trainable,
                       codes_changed=changed, codes_total=sum(layer.weight.numel() for layer in layers.values()),
                       scales=cfg.scales, scale_change=float(ratios.mean()),
                       **precision.record())
    return model.eval().requires_grad_(False), result
