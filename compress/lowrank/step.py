"""The `factorize` plan step: load the input model, calibrate on data.train, factorize, save (a
checkpoint stock transformers refuses loudly and compress.models.load_model reloads exactly)."""

from __future__ import annotations

from compress.lowrank.config import FactorizeConfig
from compress.lowrank.methods import METHODS
from compress.step_api import StepContext, StepOutput, register_step


@register_step(FactorizeConfig)
def run_factorize(cfg: FactorizeConfig, ctx: StepContext) -> StepOutput:
    from compress.lowrank.api import factorize  # torch: only when the step runs

    model = ctx.load_input()
    n_before = model.num_parameters()
    calib = ctx.train_ids() if METHODS[cfg.method].calibrates else None
    layers = factorize(model, cfg, calib, ctx.log)
    ctx.save_model(model.cpu())
    n_after = model.num_parameters()
    dense = sum(m * n for m, n in (v["shape"] for v in layers.values()))
    kept = sum(v["rank"] * sum(v["shape"]) for v in layers.values())
    ranks = [v["rank"] for v in layers.values()]
    summary = (f"{cfg.method}: {len(layers)} projections factorized, ranks {min(ranks)}-{max(ranks)}; their weights "
               f"{dense / 1e6:.2f}M -> {kept / 1e6:.2f}M ({kept / dense:.1%}); params {n_before / 1e6:.2f}M -> "
               f"{n_after / 1e6:.2f}M ({n_after / n_before:.1%})")
    ctx.log.info(summary)
    info = {"method": cfg.method, "params_before": n_before, "params_after": n_after,
            "projection_weights_before": dense, "projection_weights_after": kept, "layers": layers}
    return StepOutput(summary=summary, model_dir="model", info=info)
