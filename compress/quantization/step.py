"""The `quantize` plan step: load the previous model, quantize it, save it in its quantized format."""

from __future__ import annotations

from compress.quantization.config import QuantizeConfig
from compress.quantization.module_precision import precision_label
from compress.step_api import StepContext, StepOutput, register_step
from evalsuite.size import bytes_on_disk


@register_step(QuantizeConfig)
def run_quantize(cfg: QuantizeConfig, ctx: StepContext) -> StepOutput:
    from compress.quantization.api import quantize  # torch: only when the step runs
    from compress.quantization.outlier_check import OutlierRefusal

    model = ctx.load_input()
    m = cfg.quant_method
    # int8 activations per tensor: calibration also feeds the activation-outlier check (outlier_check.py)
    calib = ctx.train_ids() if m.calibrates or (m.int8_activations and ctx.has_train_text) else None
    if m.cpu_only and ctx.device.type != "cpu":
        ctx.log.info("%s runs on CPU only; quantizing on CPU", m.name)
    try:
        model = quantize(model, cfg, calib)
    except OutlierRefusal as e:  # name the plan key path; the step is not marked DONE
        raise e.at(ctx.inputs.step_key) from None
    outliers = model.config.quantization_config["gpt2_edge"].get("outliers")
    out = ctx.save_model(model.cpu() if m.cpu_only else model)
    before = bytes_on_disk(ctx.input_dir, weights_only=True)
    after = bytes_on_disk(out, weights_only=True)
    g = cfg.group_for(cfg.weight_bits)
    grid = f"int{cfg.weight_bits} " + (f"g{g}" if g else "per-channel")
    per_module = {}
    if cfg.overrides:  # modules per precision, e.g. "int4 g128 x18, int8 per-channel x6, float x1"
        labels = [precision_label(*p) for p in cfg.module_precisions(model.config.n_layer).values()]
        per_module = {label: labels.count(label) for label in dict.fromkeys(labels)}
        grid = "per module: " + ", ".join(f"{k} x{n}" for k, n in per_module.items())
    head = precision_label(*cfg.precision_of("lm_head"))  # lm_head or an override of it
    summary = (f"{cfg.method} {grid}, lm_head {head}: weights {before / 1e6:.1f} MB -> "
               f"{after / 1e6:.1f} MB on disk ({before / max(after, 1):.2f}x smaller)"
               + (f"; worst activation outlier: {outliers['worst_checked'] or outliers['worst']}" if outliers else "")
               + ("; the weights stay fp32 here: the ONNX export applies it in the graph (ONNX Runtime's quantizer)"
                  if m.onnx is not None and m.onnx.in_graph else ""))
    return StepOutput(summary=summary, model_dir="model",
                      info={"bytes_before": before, "bytes_after": after, "method": cfg.method,
                            "bits": cfg.weight_bits, "group_size": g or "per-channel"}
                      | ({"modules_by_precision": per_module} if per_module else {})
                      | ({"outliers": outliers} if outliers else {}))
