"""Train a GPT-2 from scratch on text: the embedded default teacher of the quickstart.

AdamW (or Muon for the blocks' matrices: compress.optimizers), linear warm-up then cosine decay, gradient accumulation and clipping, a token budget, tqdm
progress (loss, tokens/s), TensorBoard scalars, and checkpoints that a killed run resumes from with
the same result as an uninterrupted one (batches are a pure function of seed and step). The loop
around the forward/backward, with the divergence guard, is compress.training.train_loop.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from compress.source_config import PretrainConfig, TrainTokenizer
from compress.errors import UserError
from compress.divergence import safe_exp
from compress.precision import fused_gelu, resolve_precision
from compress.optimizers import OPTIMIZERS
from compress.training import LoopSpec, heldout_loss, resume, sample_batch, train_loop
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
    resumes from it. With `heldout_ids`, held-out ppl is measured every cfg.eval_every steps, the
    best weights are returned and the divergence guard judges them (compress.divergence).
    `on_step(step, loss)` is called after each optimizer step.
    """
    if train_ids.numel() <= cfg.seq_len + 1:
        raise UserError(f"pretrain: the training text has {train_ids.numel()} tokens, fewer than seq_len + 2 "
                        f"({cfg.seq_len + 2}); give more data.train")
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = OPTIMIZERS[cfg.optimizer](model, cfg.lr, cfg.weight_decay)
    state, best = resume(model, optimizer, checkpoint_dir, "pretraining")
    precision = resolve_precision(cfg.amp, torch.device(device))

    def step_fn(step: int) -> dict[str, float]:
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            batch = sample_batch(train_ids, cfg.batch_size, cfg.seq_len, cfg.seed, step * cfg.grad_accum + micro)
            batch = batch.to(device)
            with precision.autocast(batch.device):
                logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                     batch[:, 1:].reshape(-1))
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        return {"loss": loss_sum}

    evaluate = None
    if heldout_ids is not None and heldout_ids.numel() > cfg.seq_len:  # at least one held-out block
        def evaluate() -> dict[str, float]:
            return {"ppl": safe_exp(heldout_loss(model, heldout_ids, cfg.seq_len))}

    spec = LoopSpec.of("pretrain", cfg, cfg.batch_size * cfg.grad_accum * cfg.seq_len, total_steps(cfg),
                       advice=f"lower model.pretrain.lr (now {cfg.lr:g}) or raise warmup_steps, then rerun")
    with fused_gelu(model):
        train_loop(model, optimizer, spec, step_fn, state, best, evaluate, checkpoint_dir, tensorboard_dir,
                   progress=progress, on_step=None if on_step is None else lambda step, terms: on_step(step, terms["loss"]))
    return model.eval()
