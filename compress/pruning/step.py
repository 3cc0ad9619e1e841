"""The `prune` plan step: load the input model, calibrate on data.train, prune, save."""

from __future__ import annotations

from compress.pruning.config import CALIBRATED, PruneConfig
from compress.pruning.shapes import Shape
from compress.step_api import StepContext, StepOutput, register_step


@register_step(PruneConfig)
def run_prune(cfg: PruneConfig, ctx: StepContext) -> StepOutput:
    from compress.pruning.api import prune_with_indices  # torch: imported when the step runs, not by the plan

    model = ctx.load_input()
    # Calibration text: needed by taylor/activation; magnitude/random use it for the LayerNorm correction.
    wants_text = not cfg.prunes_nothing() and (
        cfg.importance in CALIBRATED or (cfg.correct_layernorm and ctx.has_train_text))
    calib = ctx.train_ids() if wants_text else None
    before, n_before = Shape.of_config(model.config), model.num_parameters()
    small, keep = prune_with_indices(model, cfg, calib)
    after, n_after = Shape.of_config(small.config), small.num_parameters()
    ctx.save_model(small.cpu())
    summary = (f"pruned {before} -> {after}, n_head {before.n_head} -> {after.n_head}, "
               f"n_inner {before.n_inner} -> {after.n_inner}, params {n_before / 1e6:.2f}M -> "
               f"{n_after / 1e6:.2f}M ({n_after / n_before:.1%}, {cfg.importance})")
    ctx.log.info(summary)
    dropped = sorted(set(range(before.n_layer)) - set(keep.layers))
    info = {"params_before": n_before, "params_after": n_after, "kept_fraction": n_after / n_before,
            "dropped_layers": dropped, "kept_heads": keep.heads.tolist(),
            "shape_before": before.__dict__, "shape_after": after.__dict__}
    return StepOutput(summary=summary, model_dir="model", info=info)
