"""The training loop shared by pretrain, distill, finetune and qat, and its pieces: batches, schedule,
optimizer, precision (fp32, or bf16/fp16 autocast where the device has it).

`train_loop` owns what both trainings do around their own forward/backward (`step_fn`): the lr
schedule, the NaN stop, clipping, progress and TensorBoard logging, held-out evals, best weights,
checkpoint cadence, early stopping and the divergence guard (compress.divergence).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from compress.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from compress.errors import UserError
from compress.divergence import DivergenceGuard, GuardConfig

log = logging.getLogger(__name__)


def sample_batch(ids: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int,
                 rank: int = 0) -> torch.Tensor:
    """Random windows of seq_len + 1 tokens from a token stream, a pure function of (seed, step, rank),
    so a resumed run sees exactly the batches an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + rank)
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=gen)
    return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])  # (B, T+1)


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
          own_lr: tuple[tuple[list[torch.nn.Parameter], float], ...] = (),
          exclude: tuple[torch.nn.Parameter, ...] | list[torch.nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, layer norms). `own_lr`: (params, lr) groups
    without decay whose lr keeps its ratio to `lr` through the schedule (train_loop reads `lr_scale`).
    `exclude`: parameters another optimizer trains (compress.optimizers)."""
    own = {id(p) for params, _ in own_lr for p in params} | {id(p) for p in exclude}
    params = [p for p in {id(p): p for p in model.parameters() if p.requires_grad}.values() if id(p) not in own]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, "weight_decay": 0.0, "lr": group_lr, "lr_scale": group_lr / lr} for ps, group_lr in own_lr]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, max_blocks: int = 32) -> float:
    """Mean next-token loss over the first non-overlapping blocks of a held-out stream (a quick check)."""
    n = min(max_blocks, (ids.numel() - 1) // seq_len)
    if n == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = ids[: n * seq_len + 1]
    inputs = x[:-1].view(n, seq_len).to(device)
    labels = x[1:].view(n, seq_len).to(device)
    total = 0.0
    for i in range(0, n, 8):
        logits = model(input_ids=inputs[i:i + 8]).logits
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels[i:i + 8].reshape(-1), reduction="sum"))
    model.train(was_training)
    return total / (n * seq_len)


# -- the training loop shared by pretrain and distill ---------------------------------------------

@dataclass
class LoopSpec:
    """What the shared loop needs to know about one training run."""

    name: str  # "pretrain" / "distill": progress bar, log lines, TensorBoard tags, error messages
    total_steps: int
    tokens_per_step: int  # all ranks together
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    eval_every: int
    checkpoint_every: int
    advice: str  # how to go on when the guard fails, e.g. "lower lr (now 1.0)"
    patience: int | None = None  # evals without improvement before stopping early; None: never
    keep_start: bool = False  # the weights before training compete as "best" (step 0): a run that never
    #                           beats them hands them on unchanged (finetune, qat)
    guard: GuardConfig = field(default_factory=GuardConfig)

    @classmethod
    def of(cls, name: str, cfg: Any, tokens_per_step: int, total_steps: int, advice: str,
           keep_start: bool = False) -> "LoopSpec":
        """The spec of a training step's config: its schedule, eval and checkpoint cadence, patience, guard."""
        return cls(name=name, total_steps=total_steps, tokens_per_step=tokens_per_step, lr=cfg.lr,
                   warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio, grad_clip=cfg.grad_clip,
                   eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                   patience=getattr(cfg, "patience", None), guard=cfg.guard, keep_start=keep_start, advice=advice)


@dataclass
class LoopResult:
    start: int  # the step this session started at (> 0 when resumed)
    done: int  # optimizer steps taken, all sessions
    stopped_early: bool
    tokens_per_s: float  # this session's training throughput, all ranks
    state: dict[str, Any]  # before / after held-out metrics, best_step, ...


def best_weights_file(checkpoint_dir: Path | None) -> Path | None:
    """Where the best held-out eval's weights are kept beside the checkpoint (None: no checkpoints)."""
    return checkpoint_dir.with_name(checkpoint_dir.name + ".best.safetensors") if checkpoint_dir else None


def resume(module: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: Path | None,
           what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The loop's state (restored from checkpoint_dir when one is there) and the best weights so far.

    `what` names the training in the log line ("resuming pretraining from step 40 (...)")."""
    state: dict[str, Any] = {"step": 0, "best_ppl": None, "best_step": None, "bad_evals": 0, "before": None,
                             "after": None, "grad_scale": None, "first_loss": None}
    best = None
    if checkpoint_dir is not None:
        loaded = load_checkpoint(checkpoint_dir, module, optimizer)
        if loaded is not None:
            state.update(loaded)
            best_file = best_weights_file(checkpoint_dir)
            if state["best_step"] is not None and best_file.exists():
                try:
                    best = load_file(str(best_file), device=str(next(module.parameters()).device))
                except (OSError, SafetensorError) as e:
                    raise UserError(f"{best_file}: the best weights cannot be read ({e}); delete it and "
                                    f"{checkpoint_dir}, then rerun: the step restarts from its beginning") from None
            log.info("resuming %s from step %d (%s)", what, state["step"], checkpoint_dir)
    return state, best


def train_loop(module: nn.Module, optimizer: torch.optim.Optimizer, spec: LoopSpec,
               step_fn: Callable[[int], dict[str, float]], state: dict[str, Any],
               best: dict[str, torch.Tensor] | None = None,
               evaluate: Callable[[], dict[str, float]] | None = None, checkpoint_dir: Path | None = None,
               tensorboard_dir: Path | None = None, scaler: torch.amp.GradScaler | None = None,
               main: bool = True, progress: bool = True,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> LoopResult:
    """Optimizer steps from state["step"] to spec.total_steps; module ends with the weights to hand on.

    step_fn(step) runs forward/backward of optimizer step `step` (0-based; the loop zeroes gradients)
    and returns its loss terms. evaluate() returns held-out metrics with "ppl" (None: no held-out
    eval). Around it the loop sets the schedule's lr, stops on a non-finite loss, clips, steps, logs
    (tqdm, TensorBoard), evaluates every spec.eval_every steps, keeps the best weights, checkpoints
    every spec.checkpoint_every steps (rank 0 only: `main`), stops early after spec.patience evals
    without improvement, and runs the divergence guard. on_step(step, terms) runs after each step.
    """
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)  # disabled: unscale_ and update are no-ops
    total, name = spec.total_steps, spec.name
    best_file = best_weights_file(checkpoint_dir)
    writer = _writer(tensorboard_dir, state["step"]) if main else None
    if state["before"] is None and state["step"] == 0 and evaluate is not None:
        state["before"] = evaluate()
        log.info("%s: before training, held-out %s", name, _fmt(state["before"]))
        if spec.keep_start:
            state.update(best_ppl=state["before"]["ppl"], best_step=0, after=state["before"])
            best = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if main and best_file is not None:
                save_weights(module, best_file)
    guard = DivergenceGuard(name, spec.guard, state["before"]["ppl"] if state["before"] else None, spec.advice)
    start = state["step"]
    saved = start or None  # step of the checkpoint on disk

    def kept() -> str:
        parts = []
        if state["best_step"] is not None and best_file is not None and best_file.exists():
            parts.append(f"the best weights (step {state['best_step']}, held-out ppl {state['best_ppl']:.4g}) "
                         f"in {best_file}")
        if saved is not None:
            parts.append(f"the last checkpoint (step {saved}) in {checkpoint_dir}")
        return "kept: " + " and ".join(parts) if parts else "no checkpoint was kept"

    bar = tqdm(total=total, initial=start, desc=name, unit="step", disable=not (progress and main))
    t_start = time.perf_counter()
    t_last, stopped_early, done, last_eval = t_start, False, start, None
    for step in range(start, total):
        lr = lr_at(step, total, spec.lr, spec.warmup_steps, spec.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        terms = step_fn(step)
        guard.check_finite(step + 1, terms, kept())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(module.parameters(), spec.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1

        now = time.perf_counter()
        tok_s = spec.tokens_per_step / max(now - t_last, 1e-9)
        t_last = now
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in terms.items()}, "tok/s": f"{tok_s:,.0f}"})
        bar.update(1)
        if writer is not None:
            for k, v in terms.items():
                writer.add_scalar(f"{name}/{k}", v, done)
            writer.add_scalar(f"{name}/lr", lr, done)
            writer.add_scalar(f"{name}/tokens_per_s", tok_s, done)
        if evaluate is None:
            loss = sum(terms.values())
            state["first_loss"] = loss if state["first_loss"] is None else state["first_loss"]
            guard.check_train_loss(done, loss, state["first_loss"], kept())
        elif done % spec.eval_every == 0 or done == total:
            last_eval = m = evaluate()
            log.info("%s step %d/%d: loss %s, held-out %s", name, done, total,
                     " ".join(f"{k}={v:.3f}" for k, v in terms.items()), _fmt(m))
            if writer is not None:
                for k, v in m.items():
                    writer.add_scalar(f"{name}/heldout_{k}", v, done)
            guard.check_eval(done, m["ppl"], kept())
            if state["best_ppl"] is None or m["ppl"] < state["best_ppl"]:
                state.update(best_ppl=m["ppl"], best_step=done, bad_evals=0, after=m)
                best = {k: v.detach().clone() for k, v in module.state_dict().items()}
                if main and best_file is not None:
                    save_weights(module, best_file)
            else:
                state["bad_evals"] += 1
                stopped_early = spec.patience is not None and state["bad_evals"] >= spec.patience
        state.update(step=done, tokens=done * spec.tokens_per_step,
                     grad_scale=scaler.get_scale() if scaler.is_enabled() else None)
        if main and checkpoint_dir is not None and done % spec.checkpoint_every == 0 and done < total:
            save_checkpoint(checkpoint_dir, module, optimizer, state)
            saved = done
        if on_step is not None:
            on_step(done, terms)
        if stopped_early:
            log.info("%s: no held-out improvement in %d evals; stopping at step %d (best: step %d)",
                     name, spec.patience, done, state["best_step"])
            break
    bar.close()
    if writer is not None:
        writer.close()
    if spec.guard.restore_best and best is not None and state["best_step"] != done:
        load_weights(module, best)  # the best held-out weights, not the last
    elif last_eval is not None and not spec.guard.restore_best:
        state.update(after=last_eval, best_step=done)
    if state["after"] is not None and done > start:
        guard.check_end(done, state["after"]["ppl"], state["best_step"], kept())
    elapsed = time.perf_counter() - t_start
    return LoopResult(start=start, done=done, stopped_early=stopped_early, state=state,
                      tokens_per_s=(done - start) * spec.tokens_per_step / elapsed if done > start else 0.0)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _writer(tensorboard_dir: Path | None, start: int):
    if tensorboard_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(tensorboard_dir), purge_step=start or None)
