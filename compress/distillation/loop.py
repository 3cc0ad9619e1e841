"""The distillation training loop: single process, or one rank of a torchrun DDP job.

Each optimizer step: the teacher runs under no_grad on the micro-batch (its logits live only for that
batch, never for the corpus), the student runs forward/backward through DDP when distributed, and the
weighted loss terms are averaged over ranks for logging and the NaN check. Batches are a pure
function of (seed, step, rank), so a run killed after checkpoint N and resumed reproduces the
uninterrupted run. The last `eval_tokens` of the training stream are held out for periodic
perplexity, early stopping and choosing the best weights; they are never trained on.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from transformers import GPT2LMHeadModel

from compress import distributed as dist
from compress.checkpoint import save_weights
from compress.distillation.config import DistillConfig
from compress.distillation.evaluate import heldout_eval, split_heldout
from compress.distillation.fused_head import fused_head_losses
from compress.distillation.losses import HiddenProjection, ce_loss, even_layer_map, hidden_loss, kl_loss
from compress.errors import UserError
from compress.precision import fused_gelu, resolve_precision
from compress.optimizers import OPTIMIZERS
from compress.training import LoopSpec, resume, sample_batch, train_loop


class Distiller(nn.Module):
    """What is trained (the student plus the hidden-state projections) and the loss it minimises."""

    def __init__(self, student: GPT2LMHeadModel, cfg: DistillConfig, layer_map: list[int], teacher_width: int):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.layer_map = layer_map  # teacher block for each student block; empty: no hidden loss
        self.projection = HiddenProjection(len(layer_map), student.config.n_embd, teacher_width)

    def forward(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
                t_hidden: tuple[torch.Tensor, ...] | None,
                t_head: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """t_logits: the teacher's logits (B, T, V); with cfg.fused_head its final hidden states
        (B, T, Ct) instead, and t_head its LM head weight (V, Ct)."""
        cfg, w = self.cfg, self.cfg.loss
        if cfg.fused_head:  # the head's logits are made and dropped chunk by chunk (fused_head.py)
            out = self.student.transformer(input_ids=x, output_hidden_states=bool(self.layer_map))
            terms = fused_head_losses(out.last_hidden_state.flatten(0, 1), self.student.lm_head.weight,
                                      t_logits.flatten(0, 1) if w.kl else None, t_head,
                                      y.flatten() if w.ce else None, cfg.temperature)
        else:
            out = self.student(input_ids=x, output_hidden_states=bool(self.layer_map))
            logits = out.logits.flatten(0, 1)  # (B*T, V)
            terms = {}
            if w.kl:
                terms["kl"] = kl_loss(logits, t_logits.flatten(0, 1), cfg.temperature)
            if w.ce:
                terms["ce"] = ce_loss(logits, y.flatten())
        if w.hidden:
            # hidden_states[k + 1] is block k's output (the last one after ln_f, in both models)
            per_layer = [hidden_loss(self.projection(i, out.hidden_states[i + 1].flatten(0, 1)),
                                     t_hidden[j + 1].flatten(0, 1), cfg.hidden_loss)
                         for i, j in enumerate(self.layer_map)]
            terms["hidden"] = torch.stack(per_layer).mean()
        total = sum(getattr(w, k) * v for k, v in terms.items())
        return total, terms

    def save_pretrained(self, path: Path, safe_serialization: bool = True) -> None:
        """Student and projections in one model.safetensors, the layout compress.checkpoint reloads."""
        Path(path).mkdir(parents=True, exist_ok=True)
        save_weights(self, Path(path) / "model.safetensors")


@dataclass
class DistillResult:
    steps: int  # optimizer steps taken (in all sessions, if resumed)
    tokens: int  # training tokens seen, all ranks
    tokens_per_step: int
    world_size: int
    stopped_early: bool
    tokens_per_s: float  # this session's training throughput, all ranks
    before: dict[str, float] | None  # held-out {ppl, kl, teacher_ppl} of the student before training
    after: dict[str, float] | None  # the same for the returned (best) weights
    best_step: int | None
    precision: str = "fp32"  # what the steps computed in (compress.precision.resolve_precision)
    precision_why: str = ""
    fused_head: bool = False  # the head's losses ran chunk by chunk (fused_head.py)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def distill(student: GPT2LMHeadModel, teacher: GPT2LMHeadModel, train_ids: torch.Tensor, cfg: DistillConfig,
            **kwargs: Any) -> GPT2LMHeadModel:
    """Train `student` to imitate `teacher` on the token stream `train_ids`; returns the student.

    Runs on the student's device. Keyword arguments are those of `run_distillation`.
    """
    return run_distillation(student, teacher, train_ids, cfg, **kwargs)[0]


def resolve_layer_map(cfg: DistillConfig, n_student: int, n_teacher: int,
                      default: list[int] | None = None) -> list[int]:
    """Teacher block for each student block: cfg.hidden_layers, else `default`, else evenly spaced."""
    if not cfg.loss.hidden:
        return []
    layer_map = cfg.hidden_layers or default or even_layer_map(n_student, n_teacher)
    if len(layer_map) != n_student:
        raise UserError(f"distill.hidden_layers has {len(layer_map)} entries; the student has {n_student} blocks")
    if max(layer_map) >= n_teacher or min(layer_map) < 0:
        raise UserError(f"distill.hidden_layers {layer_map}: the teacher has blocks 0..{n_teacher - 1}")
    return layer_map


def _check_pair(student: GPT2LMHeadModel, teacher: GPT2LMHeadModel, cfg: DistillConfig) -> None:
    s, t = student.config, teacher.config
    if s.vocab_size != t.vocab_size:
        raise UserError(f"distill: student vocab ({s.vocab_size}) differs from the teacher's ({t.vocab_size}); "
                        "they must share a tokenizer")
    if cfg.seq_len > min(s.n_positions, t.n_positions):
        raise UserError(f"distill.seq_len ({cfg.seq_len}) exceeds the model's n_positions "
                        f"({min(s.n_positions, t.n_positions)})")


def run_distillation(student: GPT2LMHeadModel, teacher: GPT2LMHeadModel, train_ids: torch.Tensor,
                     cfg: DistillConfig, checkpoint_dir: Path | None = None, tensorboard_dir: Path | None = None,
                     layer_map: list[int] | None = None, progress: bool = True,
                     on_step: Callable[[int, dict[str, float]], None] | None = None,
                     ) -> tuple[GPT2LMHeadModel, DistillResult]:
    """Distil; returns the student (best held-out weights when evaluating) and a DistillResult.

    checkpoint_dir: resumable checkpoints every cfg.checkpoint_every steps, resumed from when present.
    layer_map: default hidden-layer mapping (cfg.hidden_layers wins). on_step(step, loss terms) runs
    after every optimizer step. Under torchrun call it on every rank: rank 0 alone writes files.
    """
    _check_pair(student, teacher, cfg)
    device = next(student.parameters()).device
    precision = resolve_precision(cfg.amp, device)
    use_amp, amp_dtype = precision.dtype is not None, precision.dtype or torch.bfloat16
    cfg = cfg.model_copy(update={"fused_head": cfg.uses_fused_head(use_amp)})  # null resolved: what runs
    teacher = teacher.to(device).eval().requires_grad_(False)
    train_ids, held_ids = split_heldout(train_ids, cfg)
    layers = resolve_layer_map(cfg, student.config.n_layer, teacher.config.n_layer, layer_map)
    torch.manual_seed(cfg.seed)  # the projections start the same on every rank
    module = Distiller(student.train(), cfg, layers, teacher.config.n_embd).to(device)
    optimizer = OPTIMIZERS[cfg.optimizer](module, cfg.lr, cfg.weight_decay)

    world, rank, main = dist.world_size(), dist.rank(), dist.is_main_process()
    micro = cfg.micro_batch(world)
    tokens_per_step = micro * cfg.seq_len * cfg.grad_accum * world
    state, best = resume(module, optimizer, checkpoint_dir, "distillation")

    model = nn.parallel.DistributedDataParallel(module) if world > 1 else module  # broadcasts rank 0's weights
    scaler = torch.amp.GradScaler(device.type, init_scale=state["grad_scale"] or 2.0 ** 16,
                                  enabled=amp_dtype == torch.float16)
    spec = LoopSpec.of("distill", cfg, tokens_per_step, math.ceil(cfg.tokens / tokens_per_step),
                       advice=f"lower lr (now {cfg.lr:g}), raise warmup_steps or set amp: off, then rerun")

    def step_fn(step: int) -> dict[str, float]:
        return _train_step(model, teacher, train_ids, cfg, step, micro, rank, use_amp, amp_dtype, scaler)

    evaluate = _evaluator(module, teacher, held_ids, cfg, use_amp, amp_dtype) if held_ids is not None else None
    with fused_gelu(module, teacher):
        out = train_loop(module, optimizer, spec, step_fn, state, best, evaluate, checkpoint_dir,
                         tensorboard_dir, scaler, main=main, progress=progress, on_step=on_step)
    result = DistillResult(steps=out.done, tokens=out.done * tokens_per_step, tokens_per_step=tokens_per_step,
                           world_size=world, stopped_early=out.stopped_early, tokens_per_s=out.tokens_per_s,
                           before=state["before"], after=state["after"], best_step=state["best_step"],
                           fused_head=cfg.fused_head, **precision.record())
    return module.student.eval(), result


def _train_step(model: nn.Module, teacher: GPT2LMHeadModel, ids: torch.Tensor, cfg: DistillConfig, step: int,
                micro: int, rank: int, use_amp: bool, amp_dtype: torch.dtype,
                scaler: torch.amp.GradScaler) -> dict[str, float]:
    """Forward/backward over grad_accum micro-batches; returns the loss terms averaged over micro-batches
    and ranks."""
    device = next(teacher.parameters()).device
    need_hidden = bool(cfg.loss.hidden)
    need_teacher = bool(cfg.loss.kl or cfg.loss.hidden)  # CE alone is plain training (the bench's baseline)
    sums: dict[str, torch.Tensor] = {}
    for m in range(cfg.grad_accum):
        # Seeded per (step, rank) so dropout, if the config has any, is reproducible on resume.
        torch.manual_seed(cfg.seed * 1_000_003 + step * 7919 + m * 31 + rank)
        batch = sample_batch(ids, micro, cfg.seq_len, cfg.seed, step * cfg.grad_accum + m, rank).to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            t_out = t_last = None
            if need_teacher:
                with torch.no_grad():
                    if cfg.fused_head:  # the body only: its head runs inside the fused loss
                        t_out = teacher.transformer(input_ids=x, output_hidden_states=need_hidden)
                        t_last = t_out.last_hidden_state  # (B, T, Ct)
                    else:
                        t_out = teacher(input_ids=x, output_hidden_states=need_hidden)
                        t_last = t_out.logits  # (B, T, V)
            # DDP all-reduces gradients only on the last micro-batch
            sync = m == cfg.grad_accum - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
            with nullcontext() if sync else model.no_sync():
                loss, terms = model(x, y, t_last, t_out.hidden_states if need_hidden else None,
                                    teacher.lm_head.weight if cfg.fused_head else None)
                scaler.scale(loss / cfg.grad_accum).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach().float() / cfg.grad_accum
        del t_out, t_last  # free the teacher's logits before the next micro-batch
    names = list(sums)
    avg = dist.mean_over_ranks(torch.stack([sums[k] for k in names]))
    return {k: float(v) for k, v in zip(names, avg)}


def _evaluator(module: Distiller, teacher: GPT2LMHeadModel, held_ids: torch.Tensor | None, cfg: DistillConfig,
               use_amp: bool, amp_dtype: torch.dtype) -> Callable[[], dict[str, float]]:
    """Held-out eval on rank 0, its numbers broadcast so every rank takes the same early-stop decision."""
    def evaluate() -> dict[str, float]:
        m = {"ppl": 0.0, "kl": 0.0, "teacher_ppl": 0.0}
        if dist.is_main_process():
            with torch.autocast(teacher.device.type, dtype=amp_dtype, enabled=use_amp):
                m = heldout_eval(module.student, teacher, held_ids, cfg.seq_len)
        return {k: dist.broadcast_float(v) for k, v in m.items()}
    return evaluate
