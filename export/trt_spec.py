"""engine.json and build_engine.sh: what both engine builds (Python API here, trtexec on the device)
read, so the TensorRT export step (export.tensorrt) and the engine builder and runner
(export.trt_runner) share one definition without importing each other.

    engine.json      precision, profile, per-input shapes, ONNX sha256, build settings, `built` once built
    build_engine.sh  the trtexec command line that builds the same engine on the target
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Literal

import onnx
from onnx import TensorProto
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import UserError
from export.profiles import TensorRTProfile, input_shapes, trtexec_shape_flags
from export.trt_check import graph_inputs
from export.trt_ops import DEFAULT_TRT_VERSION, TRT_VERSIONS

ONNX_FILE, ENGINE_FILE, ENGINE_JSON = "model.onnx", "model.engine", "engine.json"
SCRIPT, TIMING_CACHE, LAYERS_JSON = "build_engine.sh", "timing.cache", "layers.json"
Precision = Literal["fp32", "fp16", "int8", "int4"]


class BuildOptions(BaseModel):
    """How the engine is built (written into engine.json and build_engine.sh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal[tuple(TRT_VERSIONS)] = DEFAULT_TRT_VERSION  # type: ignore[valid-type]
    workspace_mib: int = Field(1024, ge=64, le=65536, description="builder scratch memory (Orin Nano: keep small)")
    optimization_level: int = Field(3, ge=0, le=5, description="builder optimization level (TensorRT default 3)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def strongly_typed(graph: onnx.ModelProto) -> bool:
    """An fp16 graph is built strongly typed (types as in the ONNX); an fp32 one weakly typed with flags."""
    return any(o.type.tensor_type.elem_type == TensorProto.FLOAT16 for o in graph.graph.output)


def builder_flags(precision: Precision, typed: bool, int8_weights: bool = False) -> list[str]:
    """BuilderFlag names. Strongly typed networks take none (TensorRT rejects them); weakly typed int8
    Q/DQ graphs also set FP16 so the layers left in float run in fp16, not fp32. An int4 graph with int8
    weights beside (per-module precision) sets INT8 too."""
    if typed:
        return []
    if precision == "int4" and int8_weights:
        return ["FP16", "INT8"]
    return {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"], "int4": ["FP16"]}[precision]


def has_int8_weights(graph: onnx.ModelProto) -> bool:
    """Whether some DequantizeLinear reads an int8 initializer (trt_qdq's int8 weights)."""
    int8 = {i.name for i in graph.graph.initializer if i.data_type == TensorProto.INT8}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in graph.graph.node)


def engine_spec(graph: onnx.ModelProto, onnx_path: Path, precision: Precision, profile: TensorRTProfile,
                options: BuildOptions, findings: list, sparse_weights: bool = False) -> dict[str, Any]:
    """engine.json before the build: everything both build routes (Python API, trtexec) read.
    sparse_weights: every block projection holds 2:4 (a sparsify step), so the build enables
    TensorRT's sparse weights (BuilderFlag.SPARSE_WEIGHTS, trtexec --sparsity=enable); the ONNX is dense."""
    # Strong typing arrived in TensorRT 9: 8.x has no STRONGLY_TYPED network flag and no trtexec --stronglyTyped
    typed = strongly_typed(graph) and TRT_VERSIONS[options.target].version >= (9, 0)
    return {
        "onnx": onnx_path.name, "onnx_sha256": sha256(onnx_path), "engine": ENGINE_FILE,
        "precision": precision, "strongly_typed": typed,
        "builder_flags": builder_flags(precision, typed, has_int8_weights(graph)),
        "sparse_weights": sparse_weights,
        "target": {"tensorrt": options.target, "ships_with": TRT_VERSIONS[options.target].ships_with},
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
    old_trtexec = TRT_VERSIONS[spec["target"]["tensorrt"]].version < (8, 6)  # no optimization levels before 8.6
    sparse = ["--sparsity=enable"] if spec.get("sparse_weights") else []  # 2:4 weights: sparse tensor cores
    return [f"--onnx={spec['onnx']}", f"--saveEngine={spec['engine']}", *trtexec_shape_flags(shapes), *precision,
            *sparse,
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
