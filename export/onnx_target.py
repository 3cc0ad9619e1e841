"""The `export` step's ONNX targets: the previous torch model -> model.onnx (KV cache) + io.json +
validation.json (+ genai_config.json).

    - export: {format: onnx}                                # fp32, ORT fusions, validated to 1e-3
    - quantize: {method: ort-int4, group_size: 32}          # ORT's MatMulNBits quantizer, applied here:
    - export: {format: onnx}
    - export: {format: tensorrt, precision: fp16}           # ONNX here, engine via export.tensorrt

Both formats trace the same decoder (`OnnxGraphExport`, the shared part) and differ in their hooks:
the graph passes (ORT's quantized kernels and fusions, or TensorRT's standard-op Q/DQ), whether a
CPU decode graph is written beside, where the file is validated, and how the step finishes
(`ExportConfig` here, `TensorRTExport` in export.tensorrt). After a `quantize` step the integers of
that step are written as they are (MatMulNBits / QDQ for ONNX Runtime, Q/DQ for TensorRT), and the
export must match the torch quantized model's perplexity within validation.ppl_rel; after a method
whose layout is applied in the graph (ort-int4 / ort-int8 / ort-dynamic-int8) ONNX Runtime's quantizer
runs on the traced graph. Which pass runs is looked up by the method's OnnxForm
(export.onnx_quant.ORT_PASSES), and each target names the forms it can write (`onnx_forms`).
Older plans' `export: {quantize: int4, block_size: 32}` still run: the same method is applied to the
torch model in memory before the trace, with a note naming the quantize step that says it now. validation.json
is measured on the file the step leaves on disk (its sha256 is recorded), with ONNX Runtime, the
TensorRT Q/DQ graph included (on CPU).

The `export` plan key's handler is registered in export.step, which imports every target module.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_serializer, model_validator

from compress.errors import UserError
from compress.gate import check_export
from compress.hashing import digest
from compress.plan_state import Check, PlanState, Problem
from compress.quantization.registry import OnnxForm
from compress.step_api import StepContext, StepOutput
from evalsuite.deployment import Runtime
from evalsuite.hardware import CPU, NVIDIA_GPU
from export.old_quantize_keys import OLD_DEFAULTS, OLD_KEYS, old_quantizer
from export.target import ExportTarget, checked, quantized_records, register_target

if TYPE_CHECKING:
    import logging

    import onnx
    from torch import nn

ONNX_FILE = "model.onnx"
DECODE_KEY = "decode_graph"  # io.json's and validation.json's entry for export.decode_graph's file


class OnnxGraphExport(ExportTarget):
    """What format onnx and tensorrt share: one traced ONNX decoder with KV cache, validated with ORT."""

    opset: int = Field(18, ge=14, le=21, description="ONNX opset (optimum recommends >= 18 for GPT-2)")
    genai: bool = Field(True, description="genai_config.json beside model.onnx, so onnxruntime-genai "
                                           "generates from the export dir (export.genai)")
    writes_decode_graph: ClassVar[bool] = False  # model_decode.onnx beside model.onnx (ORT's CPU kernels)
    validates_on_device: ClassVar[bool] = False  # ORT on the plan's device (else CPU)
    onnx_forms: ClassVar[frozenset[OnnxForm]] = frozenset()  # what it writes of a quantize step's method
    ort_may_refuse: ClassVar[bool] = False  # a graph ORT cannot load is "not validated here", not an error
    # Fields of the one ExportConfig of older versions that this target does not have, with the values
    # that config dumped: added to the hash so that old run directories are reused.
    legacy_fields: ClassVar[dict[str, Any]] = {}
    # Fields added since, with their defaults: left out of the hash while at them (same reason).
    new_fields: ClassVar[dict[str, Any]] = {"genai": True}

    def looked_up_bytes(self, artifact: Path) -> int:
        from export.ort_session import gathered_bytes  # reads the graph (onnx): at run time only

        return gathered_bytes(artifact)

    @model_validator(mode="before")
    @classmethod
    def _kv_cache_is_always_on(cls, data: Any) -> Any:
        """`kv_cache: true` of older plans is accepted (and dropped): every export has the KV cache."""
        if isinstance(data, dict) and "kv_cache" in data:
            if data["kv_cache"] is not True:
                raise ValueError("kv_cache: the export always has the KV cache (one graph for prefill and "
                                 "decode: a prefill is a call with past length 0); remove the key")
            data = {k: v for k, v in data.items() if k != "kv_cache"}
        return data

    def check(self, state: PlanState) -> Check:
        from compress.quantization.methods import METHODS, method

        problems = []
        done = state.quantized
        if done is not None and method(done.method).onnx not in self.onnx_forms:
            fits = [m.name for m in METHODS.values() if m.onnx in self.onnx_forms]
            problems.append(Problem(f"the model quantized by {done.by} (method {done.method}) has no form the "
                                    f"{self.format} export writes; use {'/'.join(fits)} before it"))
        return replace(state, artifact=self.format), problems

    def content_hash(self, prev, inputs) -> str:
        """With legacy_fields and without new_fields at their defaults (genai: true adds a config file,
        builder only a plan check) the dump is the older single config's: old runs keep their hashes."""
        dump = self.model_dump(mode="json")
        dump = {k: v for k, v in dump.items() if k not in self.new_fields or v != self.new_fields[k]}
        return digest(prev, self.kind, {**self.legacy_fields, **dump}, inputs.key())

    # -- hooks of the ONNX targets ------------------------------------------------------------------------

    def graph_passes(self, graph: "onnx.ModelProto", model: "nn.Module", records: dict, done: dict,
                     log: "logging.Logger") -> "onnx.ModelProto":
        """The target's passes on the traced fp32 graph (after gemm_to_matmul and fold_transposes)."""
        raise NotImplementedError

    def approximate(self) -> str | None:
        """What makes the file approximate the torch fp32 model by design (fp16); ONNX Runtime's quantizers
        (ort-* methods) are read from the model (export.onnx_quant.graph_quantization)."""
        return None

    def prepare(self, model: "nn.Module", records: dict, ctx: StepContext) -> dict | None:
        """Changes to the torch model before tracing; returns what it recorded (step.json), or None."""
        return None

    def finish_graph(self, onnx_path: Path, ctx: StepContext, info: dict, validation: dict, done: dict,
                     records: dict, model: "nn.Module") -> StepOutput:
        raise NotImplementedError

    def export(self, ctx: StepContext) -> StepOutput:
        return export_onnx(self, ctx)


@register_target
class ExportConfig(OnnxGraphExport):
    """format onnx: one ONNX decoder with KV cache for ONNX Runtime (and a fused CPU decode graph beside)."""

    format: Literal["onnx"] = "onnx"
    optimize: bool | None = Field(
        None, description="ONNX Runtime's GPT-2 fusions (SkipLayerNorm, FastGelu); default: on for float "
                           "graphs, off for quantized ones (3-8% faster decode without them, bench/onnx.py)")
    fp16: bool = Field(False, description="fp16 weights and compute, for GPU execution providers")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute on CPU (a quantize step's int4/int8 codes, methods ort-int4/ort-int8): "
                       "4 = activations quantized to int8 per block (fast decode), 0 = fp32 (bit-matches torch; "
                       "8-bit weights then run a slow fallback)")
    writes_decode_graph: ClassVar[bool] = True
    validates_on_device: ClassVar[bool] = True
    runtime: ClassVar[Runtime] = Runtime("ONNX Runtime", (CPU, NVIDIA_GPU))  # CPU and CUDA execution providers
    onnx_forms: ClassVar[frozenset[OnnxForm]] = frozenset(OnnxForm)  # every form: ONNX Runtime runs them all
    # What the one ExportConfig of older versions dumped for these: old run directories keep their hashes.
    legacy_fields: ClassVar[dict[str, Any]] = {"precision": None, "profile": None, **OLD_DEFAULTS}
    old_keys: ClassVar[tuple[str, ...]] = OLD_KEYS
    _old: dict[str, Any] = PrivateAttr(default_factory=dict)  # an older plan's quantizer keys, as written

    @model_validator(mode="wrap")
    @classmethod
    def _old_quantizer_keys(cls, data: Any, handler: Any) -> "ExportConfig":
        """`quantize: int4, block_size: 32` of older plans: kept aside (and dumped back), validated as the
        quantize step that says it now (old_quantizer)."""
        if not isinstance(data, dict) or not set(OLD_KEYS) & data.keys():
            return handler(data)
        old = {k: data[k] for k in OLD_KEYS if k in data}
        quantizer, _ = old_quantizer(old)
        if quantizer is not None and data.get("fp16"):
            raise ValueError(f"fp16 and quantize: {old['quantize']} exclude each other")
        cfg = handler({k: v for k, v in data.items() if k not in OLD_KEYS})
        cfg._old = old
        return cfg

    @model_serializer(mode="wrap")
    def _dump_old_keys(self, handler: Any) -> dict[str, Any]:
        return {**handler(self), **self._old}  # the plan as written: a reload maps them again

    @property
    def old_quantizer(self) -> tuple[Any, str] | None:
        """(QuantizeConfig or None, the note) for an older plan's quantizer keys; None without them."""
        return old_quantizer(self._old) if self._old else None

    def check(self, state: PlanState) -> Check:
        from compress.quantization.methods import graph_methods

        problems: list[Problem] = []
        given = state  # the next step gets the torch model this export was given, quantized in memory or not
        if self.old_quantizer is not None:
            quantizer, line = self.old_quantizer
            problems.append(Problem(line, "quantize", note=True))
            if quantizer is not None:  # what the quantize step would check and leave, for this export's checks
                state, own = quantizer.check(state)
                problems += [p._replace(key="quantize") for p in own if not p.note]
        state, more = super().check(state)
        problems += more
        done = state.quantized
        if self.fp16 and done is not None and done.method in graph_methods():  # fp32 graph, ORT quantizes
            problems.append(Problem(f"fp16: the model is quantized by ONNX Runtime's quantizer ({done.by})", "fp16"))
        return replace(state, quantized=given.quantized), problems

    def graph_passes(self, graph, model, records, done, log):
        from export import onnx_quant, passes

        def fuse(g: "onnx.ModelProto") -> tuple["onnx.ModelProto", dict]:
            return passes.ort_fusions(g, model.config.n_head, model.config.n_embd)

        quant = onnx_quant.graph_quantization(model, records)
        graph = onnx_quant.ort_passes(graph, self, quant, done, fuse if fuses(self, quant) else None)
        if self.fp16:
            graph = passes.to_fp16(graph)
        done["quantized_ops"] = onnx_quant.quantized_counts(graph)
        return graph

    def approximate(self) -> str | None:
        return "fp16" if self.fp16 else None

    def prepare(self, model, records, ctx):
        """An older plan's export quantizer: the method that does it now, on the torch model in memory (the
        outlier check and smoothing of ort-dynamic-int8 included), so the graph pass finds it as after a
        quantize step."""
        if self.old_quantizer is None or self.old_quantizer[0] is None:
            return None
        quantizer, line = self.old_quantizer
        ctx.log.warning("%s: %s", ctx.inputs.step_key or ctx.name, line)
        if records:
            raise UserError(f"{ctx.name}: quantize: {self._old['quantize']} on a model already quantized "
                            f"({ctx.input_dir})")
        from compress.quantization.api import quantize
        from compress.quantization.outlier_check import OutlierRefusal

        m = quantizer.quant_method
        calib = ctx.train_ids() if (m.calibrates or m.int8_activations) and ctx.has_train_text else None
        try:
            quantize(model, quantizer, calib)
        except OutlierRefusal as e:
            raise e.at(ctx.inputs.step_key) from None
        return model.config.quantization_config["gpt2_edge"].get("outliers")

    def finish_graph(self, onnx_path, ctx, info, validation, done, records, model):
        from export.onnx_quant import graph_quantization

        quant = graph_quantization(model, records)
        what = (f"int{'/'.join(sorted({str(q.bits) for q in records.values()}))} from the quantize step" if records
                else f"{quant.label} by ONNX Runtime's quantizer" if quant is not None else self.approximate() or "fp32")
        summary = (f"ONNX opset {self.opset} with KV cache, {what}"
                   f"{', ORT fusions' if fuses(self, quant) else ''}; {checked(validation)}")
        decode = validation.get(DECODE_KEY)
        if decode is not None:
            summary += (f"; no decode graph ({decode['skipped']})" if "skipped" in decode
                        else f"; {decode['file']} (fused attention, CPU) {checked(decode)}")
        outliers = info.get("outliers")
        if outliers:
            smooth = (model.config.quantization_config["gpt2_edge"].get("smooth")
                      if quant is not None else None)
            summary += (f"; worst activation outlier: {outliers['worst_checked'] or outliers['worst']}"
                        + (f", smooth {smooth}" if smooth is not None else ""))
        return StepOutput(summary=summary, artifact=ONNX_FILE, backend="onnxruntime", info=info)


def fuses(cfg: "ExportConfig", quant) -> bool:
    """Whether ORT's Python fusions run (`quant`: export.onnx_quant.graph_quantization of the model).
    Left to ORT's own session-time fusions, quantized graphs decoded faster on the bench CPU
    (SkipLayerNorm/BiasGelu absorb the bias Adds the quantized MatMul kernels would otherwise fuse), so
    the default fuses float graphs only."""
    if cfg.optimize is not None:
        return cfg.optimize
    return quant is None


def build_graph(cfg: OnnxGraphExport, model: "nn.Module", records: dict,
                log: "logging.Logger") -> tuple["onnx.ModelProto", dict]:
    """Trace, then the target's passes. Returns the graph and what each pass did."""
    from export import passes
    from export.onnx import dequantized_copy, export_decoder

    t0 = time.perf_counter()
    graph = export_decoder(dequantized_copy(model, records) if records else model.cpu(), cfg.opset)
    done: dict = {"trace_s": round(time.perf_counter() - t0, 2)}
    done["gemm_to_matmul"] = passes.gemm_to_matmul(graph)
    done["fold_transposes"] = passes.fold_transposes(graph)
    graph = cfg.graph_passes(graph, model, records, done, log)
    log.debug("export passes: %s", done)  # step.json keeps it (info.passes); the console gets the summary
    return graph, done


def _limits(cfg: OnnxGraphExport, records: dict, model: "nn.Module | None"):
    """Which check decides: exact logits (fp32), perplexity vs the quantized torch model, or approximate
    (fp16, or ONNX Runtime's quantizer on the fp32 model)."""
    from export.onnx_quant import graph_quantization
    from export.validate import Limits

    v = cfg.validation
    if records:
        bits = sorted({ql.bits for ql in records.values()})
        return Limits(max_ppl_rel=v.ppl_rel), f"torch quantized model (int{'/'.join(map(str, bits))} QuantLinear)"
    quant = graph_quantization(model, records)
    what = quant.label if quant is not None else cfg.approximate()
    if what is not None:
        return Limits(max_ppl_rel=v.approx_ppl_rel), f"torch fp32 (export is {what})"
    return Limits(max_abs_logit=v.max_abs_logit), "torch fp32"


def _validation_runner(cfg: OnnxGraphExport, onnx_path: Path, ctx: StepContext):
    """ONNX Runtime where the plan runs; on CPU for a tensorrt export (the ONNX is the engine's input),
    for the decode graph, or when this onnxruntime has no CUDA provider."""
    from evalsuite.errors import BackendUnavailable
    from export.decode_graph import DECODE_FILE
    from export.ort_decode_runner import OrtDecodeRunner
    from export.ort_runner import OrtRunner

    if onnx_path.name == DECODE_FILE:  # a CPU graph (GroupQueryAttention over shared KV buffers)
        return OrtDecodeRunner(onnx_path, "cpu")
    if cfg.validates_on_device and ctx.device.type != "cpu":
        try:
            return OrtRunner(onnx_path, str(ctx.device))
        except BackendUnavailable as e:
            ctx.log.warning("validating on CPU: %s", e)
    return OrtRunner(onnx_path, "cpu")


def measure_file(cfg: OnnxGraphExport, onnx_path: Path, model: "nn.Module", records: dict, ctx: StepContext,
                 memo: dict | None = None) -> dict:
    """validation.json's entry for the file on disk ("passed" says whether it holds). A TensorRT graph that
    ONNX Runtime cannot load is recorded as not validated, with the reason (TensorRT checks it when it
    builds); any other load failure raises. `memo`: shared by the graphs of one export (the torch side
    is measured once)."""
    from evalsuite.runner import TorchRunner
    from export.trt_spec import sha256
    from export.validate import validate

    limits, reference = _limits(cfg, records, model)
    shipped = {"file": onnx_path.name, "sha256": sha256(onnx_path)}
    try:
        runner = _validation_runner(cfg, onnx_path, ctx)
    except UserError as e:
        if not cfg.ort_may_refuse:
            raise
        return {**shipped, "reference": reference, "ran": False, "passed": None,
                "reason": f"ONNX Runtime cannot run this TensorRT graph, so it is checked only statically "
                          f"here and by TensorRT when it builds: {e}"}
    evaluation = ctx.inputs.eval.data
    budget = min(cfg.validation.tokens, evaluation.max_tokens or cfg.validation.tokens)
    eval_ids = ctx.eval_ids()[:budget]  # the run's tokenized eval stream
    result = validate(TorchRunner(model, ctx.device), runner, eval_ids, evaluation.seq_len,
                      cfg.validation.windows, limits, reference, memo)
    return {**shipped, "runtime": f"onnxruntime on {runner.device}", "ran": True, **result.as_dict()}


def validate_file(cfg: OnnxGraphExport, onnx_path: Path, model: "nn.Module", records: dict, ctx: StepContext,
                  memo: dict | None = None) -> dict:
    """measure_file, raising (after writing validation.json) when the file fails its limits."""
    out = measure_file(cfg, onnx_path, model, records, ctx, memo)
    if out["passed"] is False:
        (ctx.out_dir / "validation.json").write_text(json.dumps(out, indent=1) + "\n")
        check_export(ctx.name, None, out["problems"])
    return out


def _write_decode_graph(cfg: OnnxGraphExport, model: "nn.Module", records: dict, ctx: StepContext,
                        done: dict) -> tuple[Path | None, dict]:
    """format onnx: model_decode.onnx beside model.onnx (export.decode_graph), or why not. Returns its path
    (None when skipped) and io.json's entry for it ({} for tensorrt, which has no decode graph)."""
    from export.decode_graph import DECODE_FILE, build_for_export, describe_decode_io
    from export.onnx import save_onnx

    if not cfg.writes_decode_graph:
        return None, {}
    t0 = time.perf_counter()
    graph, done[DECODE_KEY] = build_for_export(cfg, model, records)
    if graph is None:
        ctx.log.info("decode graph not written: %s", done[DECODE_KEY]["skipped"])
        return None, {DECODE_KEY: done[DECODE_KEY]}
    done[DECODE_KEY]["build_s"] = round(time.perf_counter() - t0, 2)
    path = save_onnx(graph, ctx.out_dir / DECODE_FILE)
    return path, {DECODE_KEY: describe_decode_io(graph)}


def export_onnx(cfg: OnnxGraphExport, ctx: StepContext) -> StepOutput:
    """format onnx / tensorrt: trace, the target's passes, save once, validate the saved file, finish."""
    from compress.quantization.storage import write_gpt2_config
    from export.onnx import describe_io, save_onnx

    records = quantized_records(ctx.input_dir)
    model = ctx.load_input()
    outliers = cfg.prepare(model, records, ctx)
    graph, done = build_graph(cfg, model, records, ctx.log)
    onnx_path = save_onnx(graph, ctx.out_dir / ONNX_FILE)  # the file that ships: nothing rewrites it after
    io = describe_io(graph)
    del graph
    decode_path, decode_io = _write_decode_graph(cfg, model, records, ctx, done)
    io.update(decode_io)
    (ctx.out_dir / "io.json").write_text(json.dumps(io, indent=1) + "\n")
    write_gpt2_config(ctx.input_dir, ctx.out_dir)  # the plan runner (and optimum) read it
    ctx.tokenizer().save_pretrained(ctx.out_dir)
    if cfg.genai:
        from export.genai import write_genai_config

        write_genai_config(ctx.out_dir, io, ctx.tokenizer(), ONNX_FILE)

    memo: dict = {}  # the torch side of the validation, measured once for both graphs
    validation = validate_file(cfg, onnx_path, model, records, ctx, memo)
    if decode_path is not None:
        validation[DECODE_KEY] = measure_file(cfg, decode_path, model, records, ctx, memo)
    elif decode_io:
        validation[DECODE_KEY] = decode_io[DECODE_KEY]  # {"skipped": why}
    (ctx.out_dir / "validation.json").write_text(json.dumps(validation, indent=1) + "\n")
    ctx.log.debug("validation: %s", validation)  # validation.json and the summary line carry it
    if validation.get(DECODE_KEY, {}).get("passed") is False:
        check_export(ctx.name, decode_path.name, validation[DECODE_KEY]["problems"])

    info = {"passes": done, "validation": validation, "inputs": len(io["inputs"]), "opset": cfg.opset}
    if outliers:
        info["outliers"] = outliers
    return cfg.finish_graph(onnx_path, ctx, info, validation, done, records, model)
