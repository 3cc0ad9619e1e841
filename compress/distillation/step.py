"""The `distill` plan step: teacher and student from the run, data.train as the text.

Under torchrun every rank runs this handler (DistillConfig.distributed); rank 0 alone saves the
model, checkpoints and TensorBoard scalars.
"""

from __future__ import annotations

from compress.distillation.config import DistillConfig
from compress.models import load_model
from compress.step_api import StepContext, StepOutput, register_step


@register_step(DistillConfig)
def distill_step(cfg: DistillConfig, ctx: StepContext) -> StepOutput:
    # torch: imported when the step runs, not when the plan is validated
    from compress import distributed as dist
    from compress.distillation.loop import run_distillation
    from compress.distillation.student import student_from_teacher, student_layers

    teacher_src = ctx.base_dir if cfg.teacher == "base" else cfg.teacher
    teacher = load_model(teacher_src).to(ctx.device)
    layer_map = None
    if cfg.student is not None:
        student = student_from_teacher(teacher, cfg.student)
        # the kept blocks are the natural hidden-state targets of the blocks built from them
        layer_map = student_layers(cfg.student, teacher.config.n_layer)
        origin = f"{student.config.n_layer}-block student built from teacher blocks {layer_map}"
    else:
        student = ctx.load_input()
        origin = f"{student.config.n_layer}x{student.config.n_embd} student from the previous step"
    student, result = run_distillation(
        student, teacher, ctx.train_ids(), cfg, checkpoint_dir=ctx.work_dir / "checkpoint",
        tensorboard_dir=ctx.out_dir.parent / "tensorboard" / ctx.name, layer_map=layer_map,
        progress=ctx.progress and dist.is_main_process())
    from compress.sparsity.pattern import drop_sparsity_record  # when the step runs (plans validate without torch)

    if drop_sparsity_record(student.config):  # every weight trained: the zeros filled in (plan note)
        ctx.log.info("distill: the sparsify step's record dropped (training refilled the pruned weights)")
    if dist.is_main_process():
        ctx.save_model(student.cpu())
    summary = f"distilled {origin} for {result.tokens:,} tokens"
    if result.before and result.after:
        summary += (f"; in-training held-out ppl {result.before['ppl']:.1f} -> {result.after['ppl']:.1f} "
                    f"(teacher {result.after['teacher_ppl']:.1f}), KL {result.before['kl']:.3f} -> "
                    f"{result.after['kl']:.3f}")
    if result.stopped_early:
        summary += f"; stopped early, best at step {result.best_step}"
    return StepOutput(summary=summary, model_dir="model",
                      info={"teacher": str(teacher_src), **result.as_dict()})
