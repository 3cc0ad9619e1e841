"""Export targets: one registered config class per `format` of the `export` step, looked up by type.

    - export: {format: onnx, fp16: true}         # export.onnx_target.ExportConfig (ONNX Runtime)
    - export: {format: tensorrt, precision: int8} # export.tensorrt.TensorRTExport
    - export: {format: gguf, type: q8_0}          # export.gguf.GgufExport (llama.cpp)

The plan's `export:` key is one step kind; `ExportTarget` (its registered config class) reads the
`format` of the mapping and validates the rest with the class registered for that format, so each
target has its own bounded fields and unknown keys stay errors at their key path. A target is one
module: its config class (a subclass of ExportTarget decorated with `@register_target`) with

    check(state)                   plan time: what the target cannot take (shapes, quantization)
    build(model, records, ctx)     write the artifact into ctx.out_dir -> Built
    runner(built, ctx)             the Runner that reads the written file back (validation)
    finish(built, validation, ctx) checksums, config files, scripts -> the StepOutput

and one line in export.step.TARGET_MODULES (the entry module of the step, which imports them all). `export(ctx)` runs the hooks in that order; a target whose
steps interleave (ONNX: a second graph validated beside the first) overrides `export` itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.gate import check_export
from compress.step_api import StepConfig
from evalsuite.deployment import Runtime

if TYPE_CHECKING:
    from torch import nn

    from compress.step_api import StepContext, StepOutput
    from evalsuite.runner import Runner
    from export.validate import Limits

_TARGETS: dict[str, type["ExportTarget"]] = {}


def register_target(cls: type["ExportTarget"]) -> type["ExportTarget"]:
    """Class decorator: the config class of every format its `format` field accepts."""
    formats = getattr(cls.model_fields["format"].annotation, "__args__", ())
    if not formats:
        raise TypeError(f"{cls.__name__}.format must be a Literal of the formats it handles")
    for f in formats:
        if f in _TARGETS and _TARGETS[f] is not cls:
            raise RuntimeError(f"export format {f!r} registered twice ({_TARGETS[f].__name__}, {cls.__name__})")
        _TARGETS[f] = cls
    return cls


def targets() -> dict[str, type["ExportTarget"]]:
    """format -> config class of every target registered so far (export.step imports them all)."""
    return dict(_TARGETS)


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_abs_logit: float = Field(1e-3, gt=0, le=100, description="fp32 export vs torch: max |logit diff|")
    ppl_rel: float = Field(0.01, gt=0, le=1, description="export from quantize-step integers vs the torch "
                                                        "quantized model: max relative perplexity gap")
    approx_ppl_rel: float = Field(0.10, gt=0, le=10, description="fp16 or the target's own quantizer vs torch fp32")
    tokens: int = Field(4096, ge=64, le=10_000_000, description="eval tokens used for validation "
                                                                "(at most data.eval.max_tokens)")
    windows: int = Field(4, ge=1, le=256, description="eval windows compared logit by logit")


@dataclass
class Built:
    """What a target's build hook wrote: the artifact (relative to the step dir) and what it did."""

    artifact: Path
    backend: str
    limits: "Limits"
    reference: str  # what the validation compares with: "torch fp32", "torch quantized model (...)"
    summary: str  # what the file is, one clause
    info: dict[str, Any] = field(default_factory=dict)


class ExportTarget(StepConfig):
    """The `export` step: `format` picks the registered target class that validates the rest."""

    kind: ClassVar[str] = "export"  # makes an artifact; the next step gets the same torch model
    # train: activation-outlier checks; eval: validation windows; latency: engine profiles
    reads: ClassVar[frozenset[str]] = frozenset({"seed", "train", "eval", "latency"})

    # What runs the artifact and on which processors: the report's "what to ship" per target device reads
    # it (evalsuite.deployment); every registered target declares its own.
    runtime: ClassVar["Runtime"]

    format: str
    old_keys: ClassVar[tuple[str, ...]] = ()  # keys of older plans the target still reads (and maps)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _by_format(cls, data: Any, handler: Any) -> Any:
        """ExportTarget.model_validate({format: f, ...}) -> the registered class of f validates it all."""
        if cls is not ExportTarget or not isinstance(data, dict):
            return handler(data)
        known = targets()
        fmt = data.get("format", "onnx")
        if fmt not in known:
            raise ValueError(f"format: unknown export format {fmt!r} (known: {', '.join(sorted(known))})")
        misplaced: dict[str, list[str]] = {}  # another format's option: say which format has it
        for key in data:
            owners = sorted({f for f, c in known.items() if key in c.model_fields or key in c.old_keys})
            if key not in known[fmt].model_fields and key not in known[fmt].old_keys and owners:
                misplaced.setdefault(" / ".join(owners), []).append(key)
        if misplaced:
            raise ValueError("; ".join(f"{', '.join(keys)}: only for format {owners}"
                                       for owners, keys in misplaced.items()))
        return known[fmt].model_validate(data)

    def looked_up_bytes(self, artifact: Path) -> int:
        """Bytes of the artifact's tables that a decode step only looks up one row of (embeddings): the
        roofline leaves them out. Recorded in step.json, so that an artifact that cannot run here (a
        TensorRT engine) is projected from the bytes it reads, as a runnable one is. 0: none known."""
        return 0

    def slug(self) -> str:
        return f"export-{self.format}"

    # -- the hooks --------------------------------------------------------------------------------------

    def build(self, model: "nn.Module", records: dict, ctx: "StepContext") -> Built:
        raise NotImplementedError

    def runner(self, built: Built, ctx: "StepContext") -> "Runner":
        raise NotImplementedError

    def finish(self, built: Built, validation: dict, ctx: "StepContext") -> "StepOutput":
        from compress.step_api import StepOutput

        return StepOutput(summary=f"{built.summary}; {checked(validation)}", artifact=str(built.artifact),
                          backend=built.backend, info={**built.info, "validation": validation})

    def export(self, ctx: "StepContext") -> "StepOutput":
        model = ctx.load_input()
        records = quantized_records(ctx.input_dir)
        built = self.build(model, records, ctx)
        validation = validate_artifact(self, built, model, ctx)
        return self.finish(built, validation, ctx)


def quantized_records(model_dir: Path | None) -> dict:
    """The quantize step's integer layers of model_dir, or {} for an fp32 model."""
    from compress.quantization import is_quantized_dir, quantized_linears
    from compress.quantization.storage import codes_in_dir

    return quantized_linears(model_dir) if model_dir is not None and is_quantized_dir(model_dir) \
        and codes_in_dir(model_dir) else {}


def validate_artifact(target: ExportTarget, built: Built, model: "nn.Module", ctx: "StepContext") -> dict:
    """validation.json for the file the target wrote (its sha256 recorded), through target.runner;
    written, then raised as a UserError when the file fails its limits."""
    from evalsuite.runner import TorchRunner
    from export.trt_spec import sha256
    from export.validate import validate

    path = ctx.out_dir / built.artifact
    runner = target.runner(built, ctx)
    evaluation = ctx.inputs.eval.data
    budget = min(target.validation.tokens, evaluation.max_tokens or target.validation.tokens)
    result = validate(TorchRunner(model, ctx.device), runner, ctx.eval_ids()[:budget], evaluation.seq_len,
                      target.validation.windows, built.limits, built.reference)
    out = {"file": path.name, "sha256": sha256(path), "runtime": getattr(runner, "runtime", runner.backend),
           "ran": True, **result.as_dict()}
    (ctx.out_dir / "validation.json").write_text(json.dumps(out, indent=1) + "\n")
    if not result.passed:
        check_export(ctx.name, None, result.problems)
    return out


def checked(v: dict) -> str:
    """What a step summary says of validation.json: how close, never a second perplexity."""
    if not v["ran"]:
        return f"not validated here ({v['reason'].split(':')[0]})"
    return (f"vs {v['reference']}: max |dlogit| {max(v['max_abs_logit_diff'], v['decode_max_abs_logit_diff']):.2g}, "
            f"top-1 {100 * v['top1_agreement']:.1f}%, ppl {100 * v['ppl_rel_diff']:.2g}% apart on the validation "
            f"windows")
