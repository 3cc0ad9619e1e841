"""Causal-LM fine-tuning through the one training loop (compress.training.train_loop).

Full fine-tuning trains every weight; with `lora`, peft wraps the chosen projections in low-rank
adapters (only they train), and at the end the adapters are saved in peft's own format, merged into
the weights, and the merge is verified: the merged stock GPT-2 must give the adapted model's logits
within fp32 noise, else the step fails. Batches and dropout are a pure function of (seed, step), so
a killed run resumed from its checkpoint ends with the weights an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from transformers import GPT2LMHeadModel

from compress.checkpoint import save_weights
from compress.errors import UserError
from compress.finetune.config import FinetuneConfig, LoraOptions
from compress.divergence import safe_exp
from compress.precision import fused_gelu, resolve_precision
from compress.training import LoopSpec, adamw, heldout_loss, resume, sample_batch, train_loop

MERGE_RTOL = 1e-4  # merged vs adapted logits: at most this x max|logits| apart (fp32 noise is ~1e-6)


class Tuned(nn.Module):
    """What is trained: the model (or its peft wrapper), checkpointed whole as one safetensors file."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def save_pretrained(self, path: Path, safe_serialization: bool = True) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        save_weights(self, Path(path) / "model.safetensors")


@dataclass
class FinetuneResult:
    steps: int  # optimizer steps taken (all sessions, if resumed)
    tokens: int
    tokens_per_step: int
    stopped_early: bool
    tokens_per_s: float  # this session's training throughput
    before: dict[str, float] | None  # held-out {ppl} before training
    after: dict[str, float] | None  # the same for the weights handed on
    best_step: int | None
    trainable_params: int
    total_params: int  # of the model, adapters excluded
    lora: bool
    precision: str
    precision_why: str
    merge_max_abs_diff: float | None = None  # LoRA: merged vs adapted logits

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_heldout(ids: torch.Tensor, heldout: torch.Tensor | None,
                  cfg: FinetuneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out): the given held-out stream, else the last heldout_fraction of ids."""
    if heldout is None:
        n_held = int(ids.numel() * cfg.heldout_fraction)
        ids, heldout = ids[: ids.numel() - n_held], ids[ids.numel() - n_held:]
    if ids.numel() < cfg.seq_len + 2:
        raise UserError(f"finetune.data: {ids.numel():,} training tokens, fewer than seq_len + 2 "
                        f"({cfg.seq_len + 2}); give more text or lower seq_len")
    if heldout.numel() < cfg.seq_len + 1:
        which = "finetune.heldout" if cfg.heldout is not None else "finetune.heldout_fraction"
        raise UserError(f"{which}: {heldout.numel():,} held-out tokens, fewer than seq_len + 1 "
                        f"({cfg.seq_len + 1}); give more held-out text or lower seq_len")
    return ids, heldout


def add_lora(model: GPT2LMHeadModel, opts: LoraOptions) -> nn.Module:
    """model wrapped by peft with LoRA adapters on opts.targets (Conv1D: fan_in_fan_out); only they train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("finetune.lora needs peft: pip install -e '.[train]'") from None
    config = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=list(opts.targets),
                        fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@torch.no_grad()
def merge_lora(net: nn.Module, probe: torch.Tensor) -> tuple[GPT2LMHeadModel, float]:
    """Merge the adapters into the weights; (the stock GPT-2, max |logits difference| on probe (B, T)).

    Raises when merged and adapted logits differ by more than fp32 noise."""
    net.eval()
    adapted = net(input_ids=probe).logits
    merged = net.merge_and_unload()
    diff = float((merged(input_ids=probe).logits - adapted).abs().max())
    bound = MERGE_RTOL * max(1.0, float(adapted.abs().max()))
    if not math.isfinite(diff) or diff > bound:
        raise UserError(f"finetune.lora: merging the adapters changed the logits by {diff:.3g} (more than fp32 "
                        f"noise, {bound:.3g}); the adapter is kept in peft's format, the step is not marked done")
    return merged, diff


def run_finetune(model: GPT2LMHeadModel, ids: torch.Tensor, cfg: FinetuneConfig,
                 heldout_ids: torch.Tensor | None = None, seed: int = 0, checkpoint_dir: Path | None = None,
                 tensorboard_dir: Path | None = None, adapter_dir: Path | None = None, progress: bool = True,
                 on_step: Callable[[int, dict[str, float]], None] | None = None,
                 ) -> tuple[GPT2LMHeadModel, FinetuneResult]:
    """Fine-tune `model` on the token stream `ids` (held out: heldout_ids, else its tail); returns the
    model with the best held-out weights (LoRA merged in) and a FinetuneResult.

    adapter_dir: where the LoRA adapter is saved in peft's format (save_pretrained). on_step(step,
    terms) runs after every optimizer step."""
    if cfg.seq_len > model.config.n_positions:
        raise UserError(f"finetune.seq_len ({cfg.seq_len}) exceeds the model's n_positions "
                        f"({model.config.n_positions})")
    train_ids, held_ids = split_heldout(ids, heldout_ids, cfg)
    device = next(model.parameters()).device
    total_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    torch.manual_seed(seed)  # LoRA's A matrices start the same in every session
    net = add_lora(model, cfg.lora) if cfg.lora else model
    module = Tuned(net.train())
    optimizer = adamw(module, cfg.lr, cfg.weight_decay)
    trainable = sum(p.numel() for p in {id(p): p for p in module.parameters() if p.requires_grad}.values())
    state, best = resume(module, optimizer, checkpoint_dir, "fine-tuning")
    precision = resolve_precision(cfg.amp, device)

    def step_fn(step: int) -> dict[str, float]:
        total = 0.0
        for m in range(cfg.grad_accum):
            torch.manual_seed(seed * 1_000_003 + step * 7919 + m * 31)  # dropout, reproducible on resume
            batch = sample_batch(train_ids, cfg.batch_size, cfg.seq_len, seed, step * cfg.grad_accum + m).to(device)
            with precision.autocast(device):
                logits = net(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        return {"loss": total}

    def evaluate() -> dict[str, float]:  # fp32: the held-out number is the model's, not the autocast's
        return {"ppl": safe_exp(heldout_loss(net, held_ids, cfg.seq_len, max_blocks=cfg.eval_tokens // cfg.seq_len))}

    spec = LoopSpec.of("finetune", cfg, cfg.tokens_per_step, math.ceil(cfg.tokens / cfg.tokens_per_step),
                       advice=f"lower lr (now {cfg.lr:g}) or raise warmup_steps, then rerun", keep_start=True)
    with fused_gelu(module):
        out = train_loop(module, optimizer, spec, step_fn, state, best, evaluate, checkpoint_dir, tensorboard_dir,
                         progress=progress, on_step=on_step)
    diff = None
    if cfg.lora:
        if adapter_dir is not None:
            net.save_pretrained(str(adapter_dir), safe_serialization=True)  # adapter_model.safetensors + config
        probe = held_ids[: 2 * cfg.seq_len].view(2, cfg.seq_len) if held_ids.numel() >= 2 * cfg.seq_len \
            else held_ids[: cfg.seq_len].view(1, cfg.seq_len)
        model, diff = merge_lora(net, probe.to(device))
    result = FinetuneResult(steps=out.done, tokens=out.done * cfg.tokens_per_step, tokens_per_step=cfg.tokens_per_step,
                            stopped_early=out.stopped_early, tokens_per_s=out.tokens_per_s, before=state["before"],
                            after=state["after"], best_step=state["best_step"], trainable_params=trainable,
                            total_params=total_params, lora=cfg.lora is not None, merge_max_abs_diff=diff,
                            **precision.record())
    return model.eval(), result
