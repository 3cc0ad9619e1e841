"""The command line of export.tensorrt: `python -m export.tensorrt check|build|run|stamp|audit STEP_DIR`.

Apart from export/tensorrt.py (the export target) so that the parser loads without onnx, torch or the
export code: `--help` and argument errors answer at once; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compress.errors import UserError
from evalsuite import cli
from export.profiles import TensorRTProfile
from export.trt_ops import DEFAULT_TRT_VERSION, TRT_VERSIONS

DESCRIPTION = "TensorRT for the export step, and the commands a Jetson user runs on the device."


def _step_dir(path: str) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def cmd_check(args: argparse.Namespace) -> int:
    import onnx

    from export.trt_check import check_model, errors
    from export.trt_spec import ENGINE_JSON, ONNX_FILE

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
    from export.trt_spec import LAYERS_JSON, read_spec

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
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python -m export.tensorrt", description=DESCRIPTION))
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

