"""The `finetune` plan step: the previous model fine-tuned on the step's own text (compress.finetune.loop)."""

from __future__ import annotations

from compress.finetune.config import FinetuneConfig
from compress.step_api import StepContext, StepOutput, register_step


@register_step(FinetuneConfig)
def finetune_step(cfg: FinetuneConfig, ctx: StepContext) -> StepOutput:
    from compress.finetune.loop import run_finetune  # torch: imported when the step runs, not by the plan

    model = ctx.load_input()
    held = ctx.text_ids("heldout") if cfg.heldout is not None else None
    model, result = run_finetune(
        model, ctx.text_ids("data"), cfg, held, seed=ctx.inputs.seed, checkpoint_dir=ctx.work_dir / "checkpoint",
        tensorboard_dir=ctx.out_dir.parent / "tensorboard" / ctx.name,
        adapter_dir=ctx.out_dir / "adapter" if cfg.lora else None, progress=ctx.progress)
    ctx.save_model(model.cpu())
    how = f"LoRA r={cfg.lora.r} (merged; adapter in adapter/)" if cfg.lora else "full"
    summary = (f"fine-tuned ({how}, {result.trainable_params:,} trainable parameters, {result.precision}) "
               f"for {result.tokens:,} tokens")
    if result.before and result.after:
        summary += f"; held-out ppl of its text {result.before['ppl']:.2f} -> {result.after['ppl']:.2f}"
    if result.stopped_early:
        summary += f"; stopped early, best at step {result.best_step}"
    return StepOutput(summary=summary, model_dir="model", info=result.as_dict())
