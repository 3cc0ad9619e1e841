"""The `export` step: one plan key, one handler, one config class per `format` (export.target).

Importing this module (the `gpt2_edge.steps` entry point of the distribution) imports every target
module in TARGET_MODULES, whose classes register themselves with `@register_target`; the plan's
`export:` mapping is then validated by `ExportTarget`, which hands it to the class of its `format`.
Adding a target is one module and one line here.

The names of the ONNX target are re-exported for the callers of this module's older form.
"""

from __future__ import annotations

import importlib

from compress.step_api import StepContext, StepOutput, register_step
from export.onnx_target import (DECODE_KEY, ONNX_FILE, ExportConfig, OnnxGraphExport, build_graph,  # noqa: F401
                                export_onnx, fuses, measure_file, validate_file)
from export.target import ExportTarget, targets  # noqa: F401

# The modules whose import registers an export target, in the order the known formats are listed.
TARGET_MODULES: tuple[str, ...] = (
    "export.onnx_target",  # onnx (ONNX Runtime)
    "export.tensorrt",  # tensorrt
    "export.gguf",  # gguf (llama.cpp)
)
for _module in TARGET_MODULES:
    importlib.import_module(_module)


@register_step(ExportTarget)
def export_step(cfg: ExportTarget, ctx: StepContext) -> StepOutput:
    """Every export format: the registered target class of `cfg.format` (export.target) does the work."""
    out = cfg.export(ctx)
    out.info["runtime"] = cfg.runtime.as_dict()  # metrics.json carries it to the report (evalsuite.deployment)
    if out.artifact:
        out.info["gathered_weight_bytes"] = cfg.looked_up_bytes(ctx.out_dir / out.artifact)
    return out
