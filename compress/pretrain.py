"""Train a GPT-2 from scratch on text: the embedded default teacher of the quickstart.

AdamW, linear warm-up then cosine decay, gradient accumulation and clipping, a token budget, tqdm
progress (loss, tokens/s), TensorBoard scalars, and checkpoints that a killed run resumes from with
the same result as an uninterrupted one (batches are a pure function of seed and step).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from compress.checkpoint import load_checkpoint, save_checkpoint
from compress.plan import PretrainConfig, TrainTokenizer
from compress.training import adamw, heldout_loss, lr_at, sample_batch

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"


def train_tokenizer(text: str, spec: TrainTokenizer) -> GPT2TokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `text`, with <|endoftext|> as EOS."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(text.split("\n\n"), vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                            special_tokens=[EOS], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                            model_max_length=1024, clean_up_tokenization_spaces=False)
    return tok


def gpt2_config(cfg: PretrainConfig, vocab_size: int, eos_id: int) -> GPT2Config:
    return GPT2Config(vocab_size=vocab_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                      n_positions=cfg.n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=eos_id, eos_token_id=eos_id)


def total_steps(cfg: PretrainConfig) -> int:
    return math.ceil(cfg.tokens / (cfg.batch_size * cfg.grad_accum * cfg.seq_len))


def pretrain(cfg: PretrainConfig, config: GPT2Config, train_ids: torch.Tensor,
             heldout_ids: torch.Tensor | None = None, checkpoint_dir: Path | None = None,
             tensorboard_dir: Path | None = None, device: str | torch.device = "cpu",
             on_step: Callable[[int, float], None] | None = None, progress: bool = True) -> GPT2LMHeadModel:
    """Train `config` from random init on `train_ids` (1-D token stream) for cfg.tokens tokens.

    With `checkpoint_dir`, a checkpoint is written every cfg.checkpoint_every steps and training
    resumes from it. `on_step(step, loss)` is called after each optimizer step.
    """
    if train_ids.numel() <= cfg.seq_len + 1:
        raise ValueError(f"training text has {train_ids.numel()} tokens, fewer than seq_len + 2")
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    steps = total_steps(cfg)
    start = 0
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model, optimizer)
        if state is not None:
            start = state["step"]
            log.info("resuming pretraining from step %d/%d (%s)", start, steps, checkpoint_dir)
    writer = None
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard_dir), purge_step=start)

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    bar = tqdm(total=steps, initial=start, desc="pretrain", unit="step", disable=not progress)
    t_last, loss_val = time.perf_counter(), float("nan")
    for step in range(start, steps):
        lr = lr_at(step, steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            batch = sample_batch(train_ids, cfg.batch_size, cfg.seq_len, cfg.seed, step * cfg.grad_accum + micro)
            batch = batch.to(device)
            logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"pretrain: loss became {loss_sum} at step {step}; lower lr")
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_val = loss_sum

        now = time.perf_counter()
        tok_s = tokens_per_step / max(now - t_last, 1e-9)
        t_last = now
        bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tok_s:,.0f}")
        bar.update(1)
        done = step + 1
        if writer is not None:
            writer.add_scalar("pretrain/loss", loss_val, done)
            writer.add_scalar("pretrain/lr", lr, done)
            writer.add_scalar("pretrain/tokens_per_s", tok_s, done)
        if heldout_ids is not None and (done % cfg.eval_every == 0 or done == steps):
            held = heldout_loss(model, heldout_ids, cfg.seq_len)
            log.info("pretrain step %d/%d: train loss %.3f, held-out ppl %.1f", done, steps, loss_val, math.exp(held))
            if writer is not None:
                writer.add_scalar("pretrain/heldout_ppl", math.exp(held), done)
        if checkpoint_dir is not None and (done % cfg.checkpoint_every == 0 and done < steps):
            save_checkpoint(checkpoint_dir, model, optimizer, {"step": done, "tokens": done * tokens_per_step})
        if on_step is not None:
            on_step(done, loss_val)
    bar.close()
    if writer is not None:
        writer.close()
    return model.eval()
