"""TensorRT for the export step, and the commands a Jetson user runs on the device.

For `- export: {format: tensorrt, precision: ...}` the export step (export.step) writes the quantize
step's integers as explicit Q/DQ (export.trt_qdq: int8 per-channel, int4 blocked weight-only), saves
model.onnx once, validates that file with ONNX Runtime on CPU, and then calls `finish_step`, which
  1. checks the graph statically (export.trt_check) and fails the step on errors,
  2. writes engine.json (precision, profile, per-input shapes, ONNX sha256, build settings) and
     build_engine.sh (the trtexec command line that builds the same engine on the target;
     export.trt_spec),
  3. builds model.engine with TensorRT's Python API when TensorRT and a GPU are here.
Without TensorRT the step's artifact is model.onnx with backend "tensorrt": the plan runner's
evaluation then records "to be built on target".

What ran where: the Q/DQ, steps 1-2, `plan_check` and the `check` / `audit` (of layers.json) commands
run and are tested on CPU. Step 3 and the `build`, `run` and `stamp` commands need TensorRT
(export.trt_runner) and were never run: no machine this was written on has TensorRT.

    python -m export.tensorrt check STEP_DIR [--precision int8] [--target 8.6]
    python -m export.tensorrt build STEP_DIR [--workspace-mib 2048] [--opt-level 4]
    python -m export.tensorrt run   STEP_DIR "Once upon a time" [--max-new-tokens 64] [--sample]
    python -m export.tensorrt stamp STEP_DIR      # after build_engine.sh: record TensorRT version + GPU
    python -m export.tensorrt audit STEP_DIR      # layer precisions from layers.json (trtexec) or the engine
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import onnx
from pydantic import Field

from compress.errors import UserError
from evalsuite import cli
from export.profiles import TensorRTProfile, plan_profile, profile_problems
from export.onnx_target import OnnxGraphExport
from export.target import checked, register_target
from export.trt_check import check_model, errors
from export.trt_ops import DEFAULT_TRT_VERSION, TRT_VERSIONS
from export.trt_spec import (ENGINE_FILE, ENGINE_JSON, LAYERS_JSON, ONNX_FILE, SCRIPT, BuildOptions,
                             Precision, engine_spec, read_spec, write_step_files)

if TYPE_CHECKING:
    from compress.plan_state import Check, PlanState, Problem, Quantized
    from compress.step_api import StepContext, StepOutput

# -- the export target ----------------------------------------------------------------------------------

@register_target
class TensorRTExport(OnnxGraphExport):
    """format tensorrt: the ONNX decoder in standard ops (Q/DQ for int8/int4), checked, engine.json and
    build_engine.sh, and the engine itself where TensorRT runs."""

    format: Literal["tensorrt"]
    precision: Literal["fp32", "fp16", "int8", "int4"] | None = Field(None, description="engine precision "
                                                                                          "(default fp16)")
    profile: TensorRTProfile | None = Field(None, description="min/opt/max shapes (default: from the plan)")
    builder: Literal["trtexec", "edge-llm"] = Field(
        "trtexec", description="how the device builds the engine: trtexec (build_engine.sh, plain TensorRT: "
                               "INT4 blocks along K) or edge-llm (TensorRT Edge-LLM, the INT4 route on Orin: "
                               "group_size 128 and weight dimensions that are multiples of 128 only)")
    ort_may_refuse: ClassVar[bool] = True  # TensorRT checks the graph when it builds
    new_fields: ClassVar[dict[str, Any]] = {"genai": True, "builder": "trtexec"}
    legacy_fields: ClassVar[dict[str, Any]] = {"optimize": None, "fp16": False, "quantize": "none", "block_size": 128,
                                               "accuracy_level": 4, "smooth": None, "allow_outliers": False}

    def check(self, state: "PlanState") -> "Check":
        state, problems = super().check(state)
        return state, problems + plan_check(self, state)

    def graph_passes(self, graph, model, records, done, log):
        """Standard ops only (TensorRT cannot parse ORT's contrib ops); the quantize step's integers as Q/DQ."""
        if records and (self.precision or "fp16") in ("int8", "int4"):
            from export.trt_qdq import write_qdq

            done["qdq_for_tensorrt"] = write_qdq(graph, records)
        return graph

    def finish_graph(self, onnx_path, ctx, info, validation, done, records, model):
        from compress.sparsity.pattern import model_pattern

        sparse = model_pattern(model) == "2:4"  # measured on the weights: the ONNX itself stays dense
        out = finish_step(self, onnx_path, ctx, qdq=done.get("qdq_for_tensorrt", {}), sparse_weights=sparse)
        out.info = {"onnx": info, **out.info}
        out.summary = f"{out.summary}; ONNX {checked(validation)}"
        return out


# -- the export step's TensorRT part -------------------------------------------------------------------

def finish_step(cfg: Any, onnx_path: Path, ctx: "StepContext", options: BuildOptions | None = None,
                qdq: dict[str, int] | None = None, sparse_weights: bool = False) -> "StepOutput":
    """Check, engine.json, build_engine.sh and (where TensorRT runs) the engine. See the module doc.
    The graph at onnx_path is final (Q/DQ already written by the export step, `qdq` its counts):
    nothing here rewrites it, so engine.json's sha256 is that of the validated file."""
    from compress.step_api import StepOutput
    from export.trt_runner import build_engine, unavailable_reason

    options = options or BuildOptions()
    precision: Precision = cfg.precision or "fp16"
    step_dir = onnx_path.parent
    n_positions = int(json.loads((step_dir / "config.json").read_text())["n_positions"])
    lat, seq_len = ctx.inputs.latency, ctx.inputs.eval.seq_len
    profile = cfg.profile or plan_profile(lat, seq_len, n_positions)
    graph = onnx.load(str(onnx_path))
    qdq = qdq or {}
    findings = check_model(graph, precision, profile, options.target)
    problems = profile_problems(profile, n_positions, seq_len, lat.prompt if lat else None,
                                lat.new_tokens if lat else None)
    bad = [str(f) for f in errors(findings)] + [f"error: [profile] {p}" for p in problems]
    if bad:
        raise UserError(f"{onnx_path}: {len(bad)} problem(s) for TensorRT {options.target}:\n  " + "\n  ".join(bad))
    for f in findings:
        ctx.log.info("trt check: %s", f)
    spec = engine_spec(graph, onnx_path, precision, profile, options, findings, sparse_weights)
    write_step_files(step_dir, spec)
    reason = unavailable_reason()
    info = {"precision": precision, "qdq_layers": qdq, "warnings": sum(f.severity == "warning" for f in findings),
            "profile": spec["profile"], "engine_built": reason is None, "sparse_weights": sparse_weights}
    sparse = " with 2:4 sparse weights" if sparse_weights else ""
    if reason is not None:
        ctx.log.info("engine not built here (%s): run %s on the target", reason, SCRIPT)
        return StepOutput(summary=f"TensorRT {precision}{sparse}: ONNX checked ({info['warnings']} warnings), engine "
                                  f"to be built on target with {SCRIPT}", artifact=ONNX_FILE, backend="tensorrt",
                          info=info)
    built = build_engine(step_dir)
    info["built"] = built
    return StepOutput(summary=f"TensorRT {precision}{sparse} engine built with TensorRT {built['tensorrt']} on "
                              f"{built['gpu']}", artifact=ENGINE_FILE, backend="tensorrt", info=info)


def plan_check(cfg: Any, state: "PlanState") -> list["Problem"]:
    """Plan-time problems of `- export: {format: tensorrt}` (for ExportConfig.check), found before any
    model loads: a given profile against the model's positions and the plan's evaluation, the precision
    against the quantization the model carries, and the opset."""
    from compress.plan_state import Problem

    precision = cfg.precision or "fp16"
    out = []
    if cfg.profile is not None and state.shape is not None:
        prompt, new_tokens = state.latency or (None, None)
        out += [Problem(p, "profile") for p in profile_problems(cfg.profile, state.shape.n_positions,
                                                                state.eval_seq_len, prompt, new_tokens)]
    if precision == "int4" and cfg.opset < 21:
        out.append(Problem("TensorRT's INT4 DequantizeLinear needs opset: 21", "opset"))
    sp = getattr(state, "sparsity", None)
    if sp is not None and sp.pattern != "2:4":
        out.append(Problem(f"the {sp.pattern or 'unstructured'} sparsity of {sp.by} has no TensorRT sparse kernels "
                           "(2:4 only): the engine is built dense", note=True))
    if precision == "int4" and getattr(cfg, "builder", "trtexec") == "edge-llm":
        out += int4_width_problems(state)
    if precision not in ("int8", "int4"):
        return out
    q = state.quantized
    if q is None:
        from compress.quantization.methods import exportable_methods

        return out + [Problem(f"{precision} needs a quantize step before the export ({', '.join(exportable_methods())}; "
                              f"sym: true): TensorRT builds {precision} from the explicit Q/DQ of its integers",
                              "precision")]
    if q.grids:
        return out + mixed_grid_problems(q, precision)
    if q.bits != int(precision[3:]):
        out.append(Problem(f"{precision} but {q.by} makes {q.bits}-bit weights", "precision"))
    elif not q.sym:
        out.append(Problem(f"TensorRT supports symmetric quantization only: {q.by} needs sym: true", "precision"))
    elif q.bits == 8 and q.group_size is not None:
        out.append(Problem(f"TensorRT int8 weights are per-channel: {q.by} needs group_size: per-channel",
                           "precision"))
    return out


def mixed_grid_problems(q: "Quantized", precision: str) -> list["Problem"]:
    """Per-module precision (quantize overrides): every module's own Q/DQ. int4 engines take int4 blocks and
    int8 per-channel weights side by side; int8 engines int8 only; float modules stay float."""
    from compress.plan_state import Problem

    if not q.sym:
        return [Problem(f"TensorRT supports symmetric quantization only: {q.by} needs sym: true", "precision")]
    out = []
    for bits, group in q.grids:
        if bits == 4 and precision == "int8":
            out.append(Problem(f"int8 but overrides of {q.by} make int4 modules: use precision int4 (int4 and int8 "
                               "weights side by side)", "precision"))
        elif bits == 8 and group is not None:
            out.append(Problem(f"TensorRT int8 weights are per-channel: the 8-bit overrides of {q.by} need "
                               "group_size: per-channel", "precision"))
    return out


INT4_MULTIPLE = 128  # TensorRT Edge-LLM INT4: group_size 128 only, weight dims multiples of 128


def int4_width_problems(state: "PlanState") -> list["Problem"]:
    """TensorRT int4 on Jetson goes through Edge-LLM, which supports group_size 128 only and refuses weight
    dimensions that are not multiples of 128 (../shared/TENSORRT.md, addendum 2026-12-07): the
    projection widths n_embd (c_attn, attn c_proj, c_fc inputs) and n_inner (mlp c_proj input)."""
    from compress.plan_state import Problem

    out = []
    s, q = state.shape, state.quantized
    if s is not None:
        for dim, width in (("n_embd", s.n_embd), ("n_inner", s.n_inner)):
            if width % INT4_MULTIPLE:
                lo = width // INT4_MULTIPLE * INT4_MULTIPLE
                works = " or ".join(str(w) for w in (lo, lo + INT4_MULTIPLE) if w > 0)
                origin = state.origin(dim)
                fix = origin.fix(dim, INT4_MULTIPLE) if origin.fix else None
                out.append(Problem(
                    f"{dim} = {width} (made by {origin.by}) is not a multiple of {INT4_MULTIPLE}: TensorRT Edge-LLM's "
                    f"INT4 refuses such weight dimensions (TENSORRT.md); widths that work: {works}"
                    + (f" ({fix} in {origin.by})" if fix else "") + ", or builder: trtexec", "builder"))
    if q is not None and any(g != (4, INT4_MULTIPLE) for g in q.grids if g[0] != 16):
        out.append(Problem(f"{q.by} sets a precision per module: Edge-LLM's INT4 takes int4 group_size "
                           f"{INT4_MULTIPLE} only, everywhere (or builder: trtexec)", "builder"))
    elif q is not None and not q.grids and q.bits == 4 and q.group_size != INT4_MULTIPLE:
        out.append(Problem(f"{q.by} uses group_size {q.group_size or 'per-channel'}: Edge-LLM's INT4 takes "
                           f"group_size {INT4_MULTIPLE} only (or builder: trtexec)", "builder"))
    return out


# -- command line ----------------------------------------------------------------------------------------

def _step_dir(path: str) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def cmd_check(args: argparse.Namespace) -> int:
    target = Path(args.path)
    onnx_path = target if target.is_file() else target / ONNX_FILE
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such ONNX file")
    spec = json.loads((onnx_path.parent / ENGINE_JSON).read_text()) if (onnx_path.parent / ENGINE_JSON).is_file() else {}
    precision = args.precision or spec.get("precision", "fp16")
    profile = TensorRTProfile(**spec["profile"]) if "profile" in spec else None
    findings = check_model(onnx.load(str(onnx_path)), precision, profile, args.target)
    for f in findings:
        print(f)
    print(f"{len(errors(findings))} error(s), {len(findings) - len(errors(findings))} other finding(s) "
          f"for TensorRT {args.target}, precision {precision}")
    return 1 if errors(findings) else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from export.trt_runner import audit_layers, engine_layer_info

    step_dir = _step_dir(args.path)
    spec = read_spec(step_dir)
    layers = step_dir / LAYERS_JSON
    if not layers.is_file():
        _require_tensorrt()  # no trtexec layers.json: ask the engine's inspector
    info = json.loads(layers.read_text()) if layers.is_file() else engine_layer_info(step_dir)
    warnings = audit_layers(info, spec["precision"])
    for w in warnings:
        print(f"warning: {w}")
    print(f"{len(warnings)} warning(s) for a {spec['precision']} engine")
    return 0


def _require_tensorrt() -> None:
    from evalsuite.errors import BackendUnavailable
    from export.trt_runner import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"{reason}: run this on the device (JetPack ships TensorRT; see docs/jetson.md)")


def cmd_build(args: argparse.Namespace) -> int:
    from export.trt_runner import build_engine

    _require_tensorrt()
    built = build_engine(_step_dir(args.path), workspace_mib=args.workspace_mib, optimization_level=args.opt_level)
    print(json.dumps(built, indent=1))
    return 0


def cmd_stamp(args: argparse.Namespace) -> int:
    from export.trt_runner import stamp

    _require_tensorrt()
    print(json.dumps(stamp(_step_dir(args.path), by="trtexec"), indent=1))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Stream a continuation of the prompt from the engine (export.generate, the same loop as ONNX/torch)."""
    import time

    from compress.models import load_tokenizer
    from export.generate import GenerationConfig, TextStream, generate
    from export.trt_runner import open_runner

    step_dir = _step_dir(args.path)
    runner = open_runner(step_dir, args.device)  # BackendUnavailable says why not, here
    tokenizer = load_tokenizer(step_dir)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
                           eos_token_id=tokenizer.eos_token_id)
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    out = generate(runner, tokenizer.encode(args.prompt), cfg, TextStream(tokenizer))
    wall = time.perf_counter() - t0
    print(f"\n[{len(out)} tokens in {wall:.2f} s, {len(out) / wall:.1f} tokens/s incl. prefill]", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.split("\n\n")[0]))
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)
    c = sub.add_parser("check", help="static TensorRT check of model.onnx (runs anywhere)")
    c.add_argument("path", help="step directory or .onnx file")
    c.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"], default=None)
    c.add_argument("--target", choices=list(TRT_VERSIONS), default=DEFAULT_TRT_VERSION, help="TensorRT version on the device")
    c.set_defaults(fn=cmd_check)
    b = sub.add_parser("build", help="build model.engine with the TensorRT Python API (on the device)")
    b.add_argument("path")
    b.add_argument("--workspace-mib", type=int, default=None)
    b.add_argument("--opt-level", type=int, choices=range(6), default=None)
    b.set_defaults(fn=cmd_build)
    r = sub.add_parser("run", help="generate text with the engine (on the device)")
    r.add_argument("path")
    r.add_argument("prompt")
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--sample", action="store_true", help="sample (temperature 1) instead of greedy decoding")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cuda:0")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("stamp", help="record TensorRT version and GPU of a trtexec-built engine in engine.json")
    s.add_argument("path")
    s.set_defaults(fn=cmd_stamp)
    a = sub.add_parser("audit", help="warn about layers that fell back from int8/int4 (layers.json or engine)")
    a.add_argument("path")
    a.set_defaults(fn=cmd_audit)
    for sub_parser in (c, b, r, s, a):
        cli.add_debug_flag(sub_parser)  # `run STEP --debug` as well as `--debug run STEP`
    return p


def main(argv: list[str] | None = None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    def body() -> int:
        args = parser().parse_args(argv)
        return args.fn(args)  # `run` without TensorRT: BackendUnavailable says why, before any device is used

    return cli.run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main())
