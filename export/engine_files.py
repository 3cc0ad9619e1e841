"""The files of a TensorRT export step directory: engine.json, build_engine.sh, and their names.

Shared by the export step (export.tensorrt, which writes them) and the runtime (export.trt_runner,
which reads engine.json, builds the engine and stamps where it was built), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from compress.errors import UserError
from export.profiles import trtexec_shape_flags
from export.trt_check import TARGETS

ONNX_FILE, ENGINE_FILE, ENGINE_JSON = "model.onnx", "model.engine", "engine.json"
SCRIPT, TIMING_CACHE, LAYERS_JSON = "build_engine.sh", "timing.cache", "layers.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
