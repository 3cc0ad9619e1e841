"""The `sparsify` plan step: load the input model, calibrate on data.train, prune, save a stock GPT-2."""

from __future__ import annotations

from compress.sparsity.config import SparsifyConfig
from compress.sparsity.methods import METHODS
from compress.step_api import StepContext, StepOutput, register_step


@register_step(SparsifyConfig)
def run_sparsify(cfg: SparsifyConfig, ctx: StepContext) -> StepOutput:
    from compress.sparsity.api import sparsify  # torch: imported when the step runs, not by the plan

    model = ctx.load_input()
    calib = ctx.train_ids() if METHODS[cfg.method].calibrates else None
    layers = sparsify(model, cfg, calib, ctx.log)
    ctx.save_model(model.cpu())
    pruned = sum(v["sparsity"] * _numel(model, k) for k, v in layers.items())
    total = model.num_parameters()
    values = [v["sparsity"] for v in layers.values()]
    patterns = sorted({str(v["pattern"]) for v in layers.values()})
    target = cfg.target
    summary = (f"{cfg.method} {target.describe()} on {len(layers)} matrices ({', '.join(cfg.layers)}): "
               f"{min(values):.1%}-{max(values):.1%} zeros measured, pattern {'/'.join(patterns)}; "
               f"{pruned / 1e6:.2f}M of {total / 1e6:.2f}M parameters are zero ({pruned / total:.1%})")
    ctx.log.info(summary)
    info = {"method": cfg.method, "requested": {"sparsity": target.fraction, "pattern": target.pattern},
            "zero_params": int(round(pruned)), "params": total, "layers": layers}
    return StepOutput(summary=summary, model_dir="model", info=info)


def _numel(model, name: str) -> int:
    return model.get_submodule(name).weight.numel()
