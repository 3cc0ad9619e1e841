"""The `qat` plan step: the previous (quantized) model trained through its grid, saved in its layout."""

from __future__ import annotations

from compress.models import load_model
from compress.qat.config import QatConfig
from compress.step_api import StepContext, StepOutput, register_step


@register_step(QatConfig)
def qat_step(cfg: QatConfig, ctx: StepContext) -> StepOutput:
    from compress.qat.loop import run_qat  # torch: imported when the step runs, not by the plan

    teacher_src = ctx.base_dir if cfg.teacher == "base" else cfg.teacher
    model = ctx.load_input()
    model, result = run_qat(model, load_model(teacher_src), ctx.train_ids(), cfg, seed=ctx.inputs.seed,
                            checkpoint_dir=ctx.work_dir / "checkpoint",
                            tensorboard_dir=ctx.out_dir.parent / "tensorboard" / ctx.name, progress=ctx.progress)
    ctx.save_model(model.cpu())  # the quantize step's storage: same layout, same files
    share = result.codes_changed / max(result.codes_total, 1)
    summary = (f"quantization-aware training from {cfg.teacher} for {result.tokens:,} tokens ({result.precision}): "
               f"{share:.1%} of the codes moved, scales {cfg.scales}"
               + (f" (mean change {result.scale_change:.2%})" if cfg.scales == "learned" else ""))
    if result.before and result.after:
        summary += (f"; in-training held-out ppl {result.before['ppl']:.2f} -> {result.after['ppl']:.2f} "
                    f"(teacher {result.after['teacher_ppl']:.2f})")
    if result.best_step == 0:
        summary += "; no eval beat the codes it came with: handed on unchanged"
    return StepOutput(summary=summary, model_dir="model", info={"teacher": str(teacher_src), **result.as_dict()})
