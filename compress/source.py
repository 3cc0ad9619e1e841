"""The source steps: the plan's `model:` made into the run's base model (`00-base/model`).

    model: gpt2 | path/to/dir   -> LoadModel: loaded and saved in fp32 with its tokenizer
    model: {pretrain: {...}}    -> PretrainBase: a GPT-2 trained from scratch on data.train

Registered like every step (compress.step_api); their configs and plan-time checks are in
compress/source_config.py.
"""

from __future__ import annotations

from compress.source_config import LoadModel, PretrainBase
from compress.data import source_text
from compress.models import load_model, load_tokenizer, save_model
from compress.step_api import StepContext, StepOutput, register_step
from evalsuite.data import tokenize


@register_step(LoadModel)
def load_base(cfg: LoadModel, ctx: StepContext) -> StepOutput:
    model = load_model(cfg.model)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    save_model(model, ctx.out_dir / "model", tokenizer)
    return StepOutput(summary=f"loaded {cfg.model} (fp32)", model_dir="model")


@register_step(PretrainBase)
def pretrain_base(cfg: PretrainBase, ctx: StepContext) -> StepOutput:
    from compress.pretrain import gpt2_config, pretrain, train_tokenizer, total_steps
    from compress.training import resolve_precision

    p = cfg.pretrain
    text = source_text(ctx.inputs.train.source)
    if cfg.tokenizer or isinstance(p.tokenizer, str):
        tokenizer = load_tokenizer(cfg.tokenizer or p.tokenizer)
    else:
        ctx.log.info("training a %d-token byte-level BPE tokenizer on data.train", p.tokenizer.vocab_size)
        tokenizer = train_tokenizer(text, p.tokenizer)
    train_ids = tokenize(text, tokenizer)
    held_ids = tokenize(source_text(ctx.inputs.eval.source), tokenizer)
    config = gpt2_config(p, len(tokenizer), tokenizer.eos_token_id)
    model = pretrain(p, config, train_ids, held_ids, checkpoint_dir=ctx.work_dir / "checkpoint",
                     tensorboard_dir=ctx.out_dir.parent / "tensorboard" / ctx.name, device=ctx.device,
                     progress=ctx.progress)
    save_model(model.cpu(), ctx.out_dir / "model", tokenizer)
    summary = (f"pretrained {p.n_layer}x{p.n_embd} GPT-2 (vocab {len(tokenizer)}) for "
               f"{total_steps(p) * p.batch_size * p.grad_accum * p.seq_len:,} tokens "
               f"on {train_ids.numel():,}-token data.train")
    precision = resolve_precision(p.amp, ctx.device).record()
    return StepOutput(summary=summary, model_dir="model", info={"train_tokens": train_ids.numel(), **precision})
