"""TensorRT for the export step, and the commands a Jetson user runs on the device.

For `- export: {format: tensorrt, precision: ...}` the ONNX step exports model.onnx and calls
`finish_step`, which
  1. writes the quantize step's integers as explicit Q/DQ (export.trt_qdq: int8 per-channel, int4
     blocked weight-only),
  2. checks the graph statically (export.trt_check) and fails the step on errors,
  3. writes engine.json (precision, profile, per-input shapes, ONNX sha256, build settings) and
     build_engine.sh (the trtexec command line that builds the same engine on the target),
  4. builds model.engine with TensorRT's Python API when TensorRT and a GPU are here.
Without TensorRT the step's artifact is model.onnx with backend "tensorrt": the plan runner's
evaluation then records "to be built on target".

What ran where: steps 1-3, `plan_problems` and the `check` / `audit` (of layers.json) commands run
and are tested on CPU. Step 4 and the `build`, `run` and `stamp` commands need TensorRT
(export.trt_runner) and were never run: no machine this was written on has TensorRT.

    python -m export.tensorrt check STEP_DIR [--precision int8] [--target 8.6]
    python -m export.tensorrt build STEP_DIR [--workspace-mib 2048] [--opt-level 4]
    python -m export.tensorrt run   STEP_DIR "Once upon a time" [--max-new-tokens 64] [--sample]
    python -m export.tensorrt stamp STEP_DIR      # after build_engine.sh: record TensorRT version + GPU
    python -m export.tensorrt audit STEP_DIR      # layer precisions from layers.json (trtexec) or the engine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx
from onnx import TensorProto
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import UserError
from export.profiles import TensorRTProfile, input_shapes, plan_profile, profile_problems, trtexec_shape_flags
from export.trt_check import DEFAULT_TARGET, TARGETS, check_model, errors, graph_inputs

if TYPE_CHECKING:
    from compress.steps import StepContext, StepOutput

ONNX_FILE, ENGINE_FILE, ENGINE_JSON = "model.onnx", "model.engine", "engine.json"
SCRIPT, TIMING_CACHE, LAYERS_JSON = "build_engine.sh", "timing.cache", "layers.json"
Precision = Literal["fp32", "fp16", "int8", "int4"]


class BuildOptions(BaseModel):
    """How the engine is built (written into engine.json and build_engine.sh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal[tuple(TARGETS)] = DEFAULT_TARGET  # type: ignore[valid-type]
    workspace_mib: int = Field(1024, ge=64, le=65536, description="builder scratch memory (Orin Nano: keep small)")
    optimization_level: int = Field(3, ge=0, le=5, description="builder optimization level (TensorRT default 3)")


# -- engine.json and build_engine.sh -------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def strongly_typed(graph: onnx.ModelProto) -> bool:
    """An fp16 graph is built strongly typed (types as in the ONNX); an fp32 one weakly typed with flags."""
    return any(o.type.tensor_type.elem_type == TensorProto.FLOAT16 for o in graph.graph.output)


def builder_flags(precision: Precision, typed: bool) -> list[str]:
    """BuilderFlag names. Strongly typed networks take none (TensorRT rejects them); weakly typed int8
    Q/DQ graphs also set FP16 so the layers left in float run in fp16, not fp32."""
    if typed:
        return []
    return {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"], "int4": ["FP16"]}[precision]


def engine_spec(graph: onnx.ModelProto, onnx_path: Path, precision: Precision, profile: TensorRTProfile,
                options: BuildOptions, findings: list) -> dict[str, Any]:
    """engine.json before the build: everything both build routes (Python API, trtexec) read."""
    # Strong typing arrived in TensorRT 9: 8.x has no STRONGLY_TYPED network flag and no trtexec --stronglyTyped
    typed = strongly_typed(graph) and TARGETS[options.target].version >= (9, 0)
    return {
        "onnx": onnx_path.name, "onnx_sha256": sha256(onnx_path), "engine": ENGINE_FILE,
        "precision": precision, "strongly_typed": typed, "builder_flags": builder_flags(precision, typed),
        "target": {"tensorrt": options.target, "ships_with": TARGETS[options.target].ships_with},
        "profile": profile.model_dump(mode="json"),
        "shapes": {name: {p: list(s) for p, s in pts.items()} for name, pts in
                   input_shapes(graph_inputs(graph), profile).items()},
        "workspace_mib": options.workspace_mib, "optimization_level": options.optimization_level,
        "timing_cache": TIMING_CACHE,
        "check": [str(f) for f in findings],
        "built": None,  # {tensorrt, gpu, compute_capability, engine_sha256, by, built_at} once built
    }


def trtexec_args(spec: dict[str, Any]) -> list[str]:
    shapes = {name: {p: tuple(s) for p, s in pts.items()} for name, pts in spec["shapes"].items()}
    precision = ["--stronglyTyped"] if spec["strongly_typed"] else [f"--{f.lower()}" for f in spec["builder_flags"]]
    level = f"--builderOptimizationLevel={spec['optimization_level']}"
    old_trtexec = TARGETS[spec["target"]["tensorrt"]].version < (8, 6)  # no optimization levels before 8.6
    return [f"--onnx={spec['onnx']}", f"--saveEngine={spec['engine']}", *trtexec_shape_flags(shapes), *precision,
            f"--timingCacheFile={spec['timing_cache']}", *([] if old_trtexec else [level]),
            f"--memPoolSize=workspace:{spec['workspace_mib']}",
            # layer precisions for `python -m export.tensorrt audit` (the int8-slower-than-fp16 check)
            "--profilingVerbosity=detailed", f"--exportLayerInfo={LAYERS_JSON}", "--skipInference"]


def build_script(spec: dict[str, Any]) -> str:
    args = " \\\n    ".join(shlex.quote(a) for a in trtexec_args(spec))
    return f"""#!/usr/bin/env bash
# Build {spec['engine']} from {spec['onnx']} on the device that will run it (an engine is tied to the GPU
# model and the TensorRT version). Written by gpt2-edge with the settings recorded in {ENGINE_JSON}:
# precision {spec['precision']}, target TensorRT {spec['target']['tensorrt']} ({spec['target']['ships_with']}).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-/usr/src/tensorrt/bin/trtexec}}"   # JetPack's location; override for x86
"$TRTEXEC" \\
    {args} 2>&1 | tee build_engine.log
# Record the TensorRT version and GPU in {ENGINE_JSON}, so the runner can refuse a mismatched engine.
if python3 -c "import export.tensorrt" 2>/dev/null; then
    python3 -m export.tensorrt stamp . || echo "note: could not stamp {ENGINE_JSON} (needs tensorrt and CUDA torch)"
else
    echo "note: gpt2-edge is not importable here; {ENGINE_JSON} does not record where {spec['engine']} was built"
fi
"""


def write_step_files(step_dir: Path, spec: dict[str, Any]) -> None:
    (step_dir / ENGINE_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    script = step_dir / SCRIPT
    script.write_text(build_script(spec))
    script.chmod(0o755)


def read_spec(step_dir: Path) -> dict[str, Any]:
    path = step_dir / ENGINE_JSON
    if not path.is_file():
        raise UserError(f"{step_dir}: no {ENGINE_JSON} (not a TensorRT export step directory)")
    return json.loads(path.read_text())


# -- the export step's TensorRT part -------------------------------------------------------------------

def finish_step(cfg: Any, onnx_path: Path, ctx: "StepContext", options: BuildOptions | None = None) -> "StepOutput":
    """Q/DQ, check, engine.json, build_engine.sh and (where TensorRT runs) the engine. See the module doc."""
    from compress.steps import StepOutput
    from export.trt_runner import build_engine, unavailable_reason

    options = options or BuildOptions()
    precision: Precision = cfg.precision or "fp16"
    step_dir = onnx_path.parent
    n_positions = int(json.loads((step_dir / "config.json").read_text())["n_positions"])
    profile = cfg.profile or plan_profile(ctx.plan, n_positions)
    graph = onnx.load(str(onnx_path))
    qdq = {}
    if precision in ("int8", "int4") and _is_quantized(ctx.input_dir):
        from compress.quantization.handoff import quantized_linears
        from export.trt_qdq import write_qdq

        qdq = write_qdq(graph, quantized_linears(ctx.input_dir))
        onnx.save(graph, str(onnx_path))
    findings = check_model(graph, precision, profile, options.target)
    lat = ctx.plan.eval.latency
    problems = profile_problems(profile, n_positions, ctx.plan.data.eval.seq_len if ctx.plan.eval.perplexity else None,
                                lat.prompt if lat else None, lat.new_tokens if lat else None)
    bad = [str(f) for f in errors(findings)] + [f"error: [profile] {p}" for p in problems]
    if bad:
        raise UserError(f"{onnx_path}: {len(bad)} problem(s) for TensorRT {options.target}:\n  " + "\n  ".join(bad))
    for f in findings:
        ctx.log.info("trt check: %s", f)
    spec = engine_spec(graph, onnx_path, precision, profile, options, findings)
    write_step_files(step_dir, spec)
    reason = unavailable_reason()
    info = {"precision": precision, "qdq_layers": qdq, "warnings": sum(f.severity == "warning" for f in findings),
            "profile": spec["profile"], "engine_built": reason is None}
    if reason is not None:
        ctx.log.info("engine not built here (%s): run %s on the target", reason, SCRIPT)
        return StepOutput(summary=f"TensorRT {precision}: ONNX checked ({info['warnings']} warnings), engine to be "
                                  f"built on target with {SCRIPT}", artifact=ONNX_FILE, backend="tensorrt", info=info)
    built = build_engine(step_dir)
    info["built"] = built
    return StepOutput(summary=f"TensorRT {precision} engine built with TensorRT {built['tensorrt']} on {built['gpu']}",
                      artifact=ENGINE_FILE, backend="tensorrt", info=info)


def plan_problems(cfg: Any, plan: Any, index: int) -> list[str]:
    """Plan-time problems of `- export: {format: tensorrt}` (for ExportConfig.plan_problems), found
    before any model loads: the precision against the quantize step before it, and the opset."""
    precision = cfg.precision or "fp16"
    out = []
    if precision == "int4" and cfg.opset < 21:
        out.append("precision int4: TensorRT's INT4 DequantizeLinear needs opset: 21")
    if precision not in ("int8", "int4"):
        return out
    quant = [(j, s) for j, s in enumerate(plan.steps[:index]) if s.kind == "quantize"]
    if not quant:
        from compress.quantization.methods import exportable_methods

        return out + [f"precision {precision} needs a quantize step before the export "
                      f"({', '.join(exportable_methods())}; sym: true): TensorRT builds {precision} from the "
                      "explicit Q/DQ of its integers"]
    j, q = quant[-1]
    bits = q.weight_bits
    if bits != int(precision[3:]):
        out.append(f"precision {precision} but steps[{j}].quantize makes {bits}-bit weights")
    elif not q.sym:
        out.append(f"steps[{j}].quantize.sym: TensorRT supports symmetric quantization only (sym: true)")
    elif bits == 8 and q.group_for(8) is not None:
        out.append(f"steps[{j}].quantize.group_size: TensorRT int8 weights are per-channel (group_size: per-channel)")
    return out


def _is_quantized(model_dir: Path) -> bool:
    from compress.quantization.handoff import is_quantized_dir

    return is_quantized_dir(model_dir)


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
    from evalsuite.backends import BackendUnavailable
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
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="static TensorRT check of model.onnx (runs anywhere)")
    c.add_argument("path", help="step directory or .onnx file")
    c.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"], default=None)
    c.add_argument("--target", choices=list(TARGETS), default=DEFAULT_TARGET, help="TensorRT version on the device")
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
    return p


def main(argv: list[str] | None = None) -> int:
    from evalsuite.backends import BackendUnavailable

    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (UserError, BackendUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
