"""Everything that needs the `tensorrt` module: the engine build, the KV-cache runner, the layer audit.

NEVER RUN: TensorRT cannot be installed on the machines this was written on. The code follows the
TensorRT 10 Python API as documented (../shared/TENSORRT.md sections 6-7: NVIDIA/TensorRT
release/10.3 pyCore.cpp, pyOnnx.cpp, samples/python) and was reviewed call by call against it; its
tests are marked `tensorrt` and skip where `import tensorrt` fails. The pure helpers below
(unavailable_reason, compatibility_problems, pair_past_present, layer_precision, audit_layers) need
no TensorRT and are tested everywhere.

    runner = open_runner(Path("runs/x/06-export-tensorrt/model.engine"), "cuda:0")
    logits, past = runner.forward(ids)              # prefill: past length 0
    logits, past = runner.forward(next_ids, past)   # decode with the KV cache
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import UserError
from evalsuite.errors import BackendUnavailable
from evalsuite.errors import EvalInputError
from export.profiles import BATCH, MASK_INPUTS, PAST, TOKEN_INPUTS, InputSpec, axis_roles
from export.trt_spec import ENGINE_JSON, LAYERS_JSON, read_spec, sha256, write_step_files

log = logging.getLogger(__name__)
REBUILD = "rebuild it on this device with build_engine.sh (or python -m export.tensorrt build STEP_DIR)"


# -- pure helpers (tested everywhere) ------------------------------------------------------------------

def unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"TensorRT is not installed here ({e})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch here"
    return None


def compatibility_problems(built: dict[str, Any] | None, tensorrt_version: str, gpu: str, capability: str) -> list[str]:
    """Why an engine recorded as `built` cannot run under this TensorRT on this GPU (empty: it can)."""
    if not built:
        return []
    out = []
    if built.get("tensorrt") != tensorrt_version:
        out.append(f"it was built with TensorRT {built.get('tensorrt')}, this is TensorRT {tensorrt_version}")
    if (built.get("gpu"), built.get("compute_capability")) != (gpu, capability):
        out.append(f"it was built on {built.get('gpu')} (sm {built.get('compute_capability')}), this is {gpu} "
                   f"(sm {capability})")
    return out


def pair_past_present(past_inputs: list[str], outputs: list[str]) -> dict[str, str]:
    """past input -> the output that holds its next value: 'past_key_values.3.key' -> 'present.3.key'
    (matched on the part after the first dot, as optimum names them)."""
    by_suffix = {o.split(".", 1)[1]: o for o in outputs if o.startswith("present") and "." in o}
    missing = [p for p in past_inputs if p.split(".", 1)[-1] not in by_suffix]
    if missing:
        raise UserError(f"no present.* output for past input(s) {', '.join(missing[:3])} (outputs: {outputs[:4]}...)")
    return {p: by_suffix[p.split(".", 1)[1]] for p in past_inputs}


def layer_precision(fmt: str) -> str:
    """'Row major linear FP16 format' / 'Half' / 'Thirty-two wide ... Int8 format.' -> 'FP16' / 'INT8'."""
    s = fmt.lower()
    for key, name in (("int8", "INT8"), ("int4", "INT4"), ("fp8", "FP8"), ("bf16", "BF16"), ("fp16", "FP16"),
                      ("half", "FP16"), ("fp32", "FP32"), ("float", "FP32"), ("int32", "INT32"), ("int64", "INT64")):
        if key in s:
            return name
    return "unknown"  # e.g. "N/A due to dynamic shapes" (no execution context given to the inspector)


def _is_gemm(layer: dict[str, Any]) -> bool:
    kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()
    return any(k in kind for k in ("gemm", "matrixmultiply", "matmul", "convolution", "fullyconnected"))


def audit_layers(info: dict[str, Any], precision: str) -> list[str]:
    """Warnings when layers meant to be int8/int4 run in fp16/fp32 ('int8 engine slower than fp16').

    `info` is the engine inspector's JSON (or trtexec --exportLayerInfo). Layers fused into Myelin
    'ForeignNode's do not list their inner precisions; the audit says so instead of guessing.
    """
    layers = info.get("Layers", [])
    if layers and isinstance(layers[0], str):
        return ["layer information has names only: build with profiling verbosity DETAILED to audit precisions"]
    if precision not in ("int8", "int4"):
        return []
    seen = {layer_precision(t.get("Format/Datatype", "")) for lay in layers
            for t in [*lay.get("Inputs", []), *lay.get("Outputs", [])]}
    out = []
    if precision == "int8":
        for lay in filter(_is_gemm, layers):
            got = {layer_precision(t.get("Format/Datatype", "")) for t in lay.get("Inputs", [])}
            if "INT8" not in got and got != {"unknown"}:
                out.append(f"{lay.get('Name')}: {lay.get('LayerType')} runs in {'/'.join(sorted(got))}, meant int8")
    wanted = precision.upper()
    if layers and wanted not in seen:
        out.append(f"no layer reads or writes {wanted} data: the Q/DQ may have been folded into float weights, "
                   f"so the engine is not {precision} (compare its size and speed with the fp16 engine)")
    opaque = [lay for lay in layers if "foreignnode" in str(lay.get("Name", "")).lower()
              or str(lay.get("LayerType", "")).lower() == "myelin"]
    if opaque:
        out.append(f"{len(opaque)} Myelin (ForeignNode) layer(s) hide their inner precisions: profile them with "
                   f"trtexec --separateProfileRun --dumpProfile")
    return out


# -- build (needs TensorRT) ------------------------------------------------------------------------------

def trt_version(trt: Any) -> tuple[int, int]:
    major, minor = trt.__version__.split(".")[:2]
    return int(major), int(minor)


def device_facts(device: str = "cuda:0") -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of the device that builds or runs the engine."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def build_engine(step_dir: Path, workspace_mib: int | None = None, optimization_level: int | None = None) -> dict:
    """Parse model.onnx, build with engine.json's settings, serialize model.engine, stamp and audit it."""
    import tensorrt as trt

    spec = read_spec(step_dir)
    onnx_path = step_dir / spec["onnx"]
    if sha256(onnx_path) != spec["onnx_sha256"]:
        raise UserError(f"{onnx_path} changed since {ENGINE_JSON} was written: export the step again")
    spec["workspace_mib"] = workspace_mib or spec["workspace_mib"]
    spec["optimization_level"] = spec["optimization_level"] if optimization_level is None else optimization_level
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if spec["strongly_typed"] and trt_version(trt) < (9, 0):  # no STRONGLY_TYPED flag in TensorRT 8.x
        raise UserError(f"{ENGINE_JSON} asks for a strongly typed build (target TensorRT {spec['target']['tensorrt']}), "
                        f"this is TensorRT {trt.__version__}: export again with the target set to this version")
    # Strongly typed: types as in the ONNX (an fp16 graph); weakly typed: precision flags decide.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if spec["strongly_typed"] else 0
    if trt_version(trt) < (10, 0):  # TensorRT 8.x: flags 0 would mean implicit batch, which ONNX cannot use
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weight data from beside the file
        errs = [parser.get_error(i) for i in range(parser.num_errors)]
        raise UserError(f"{onnx_path}: TensorRT could not parse it:\n  " + "\n  ".join(
            f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}" for e in errs))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec["workspace_mib"] << 20)
    for flag in spec["builder_flags"]:
        config.set_flag({"FP16": trt.BuilderFlag.FP16, "INT8": trt.BuilderFlag.INT8}[flag])
    if spec.get("sparse_weights"):  # 2:4 weights (a sparsify step): let TensorRT pick sparse tactics
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if trt_version(trt) >= (8, 6):  # the setting appeared in 8.6
        config.builder_optimization_level = spec["optimization_level"]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the audit
    cache_path = step_dir / spec["timing_cache"]
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, False):  # False: refuse a cache timed on another device
        log.warning("%s was made on another device; timing from scratch", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    profile = builder.create_optimization_profile()
    for name, pts in spec["shapes"].items():
        profile.set_shape(name, pts["min"], pts["opt"], pts["max"])
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build {onnx_path} (see its log above); on an 8 GB Orin try a smaller "
                        f"--workspace-mib than {spec['workspace_mib']} and close other programs")
    (step_dir / spec["engine"]).write_bytes(plan)
    cache_path.write_bytes(config.get_timing_cache().serialize())
    write_step_files(step_dir, spec)  # engine.json and build_engine.sh keep the settings actually used
    built = stamp(step_dir, by="python-api", build_s=round(time.perf_counter() - t0, 1))
    info = engine_layer_info(step_dir)
    (step_dir / LAYERS_JSON).write_text(json.dumps(info, indent=1) + "\n")
    for warning in audit_layers(info, spec["precision"]):
        log.warning("engine audit: %s", warning)
    return built


def stamp(step_dir: Path, by: str, **extra: Any) -> dict:
    """Record in engine.json which TensorRT and GPU built model.engine (and its sha256)."""
    import tensorrt as trt

    spec = read_spec(step_dir)
    engine = step_dir / spec["engine"]
    if not engine.is_file():
        raise UserError(f"{engine}: no engine to stamp (build it first)")
    gpu, capability = device_facts()
    spec["built"] = {"tensorrt": trt.__version__, "gpu": gpu, "compute_capability": capability,
                     "engine_sha256": sha256(engine), "by": by, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     **extra}
    (step_dir / ENGINE_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    return spec["built"]


def engine_layer_info(step_dir: Path) -> dict:
    """The engine inspector's per-layer JSON, at the profile's opt shapes (formats need concrete shapes)."""
    import tensorrt as trt

    runner = TrtRunner(step_dir)
    for name, pts in read_spec(step_dir)["shapes"].items():
        runner.context.set_input_shape(name, pts["opt"])
    inspector = runner.engine.create_engine_inspector()
    inspector.execution_context = runner.context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# -- runner (needs TensorRT and CUDA) --------------------------------------------------------------------

@dataclass
class TrtPast:
    """KV cache between calls: the present.* tensors of the last call, by the past input they feed."""

    tensors: dict[str, torch.Tensor]  # past input name -> (B, nh, past, hs) on the GPU

    @property
    def length(self) -> int:
        return next(iter(self.tensors.values())).shape[2]


class TrtRunner:
    """The evalsuite Runner protocol over a serialized engine, with TensorRT 10's name-based I/O."""

    backend = "tensorrt"

    def __init__(self, step_dir: Path, device: str = "cuda:0"):
        import tensorrt as trt

        spec = read_spec(step_dir)
        path = step_dir / spec["engine"]
        built = spec.get("built")
        if built and built.get("engine_sha256") != sha256(path):
            log.warning("%s was rebuilt after %s was stamped; run `python -m export.tensorrt stamp`", path, ENGINE_JSON)
            built = None
        problems = compatibility_problems(built, trt.__version__, *device_facts(device))
        if problems:
            raise UserError(f"{path}: engine does not match this device: {'; '.join(problems)}: {REBUILD}")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: the runtime must outlive the engines it made
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:  # TensorRT refuses engines of another version / GPU architecture
            raise UserError(f"{path}: TensorRT {trt.__version__} cannot load this engine: {REBUILD}")
        self.context = self.engine.create_execution_context()
        self.device = device
        config = json.loads((step_dir / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}  # -1 = dynamic
        self.past_names = [n for n in self.inputs
                           if axis_roles(InputSpec(n, self.shapes[n])) == (BATCH, None, PAST, None)]
        self.present_for = pair_past_present(self.past_names, self.outputs)
        unknown = set(self.inputs) - set(self.past_names) - set(TOKEN_INPUTS) - set(MASK_INPUTS)
        if unknown:
            raise UserError(f"{path}: engine inputs {sorted(unknown)} are not GPT-2 decoder inputs")
        _, _, ids_max = self.engine.get_tensor_profile_shape(TOKEN_INPUTS[0], 0)  # (min, opt, max)
        self.max_batch, self.max_prompt = int(ids_max[0]), int(ids_max[1])
        past_max = int(self.engine.get_tensor_profile_shape(self.past_names[0], 0)[2][2]) if self.past_names else 0
        self.max_positions = min(int(config["n_positions"]), past_max + 1)
        self.stream = torch.cuda.Stream(device)
        self._one_byte = torch.empty(1, dtype=torch.uint8, device=device)  # address for empty tensors

    def forward(self, input_ids: torch.Tensor, past: TrtPast | None = None) -> tuple[torch.Tensor, TrtPast]:
        if past is None and input_ids.shape[0] > self.max_batch:  # more rows than the profile: split them
            parts = [self.forward(rows) for rows in input_ids.split(self.max_batch)]
            merged = {n: torch.cat([p.tensors[n] for _, p in parts]) for n in self.past_names}
            return torch.cat([logits for logits, _ in parts]), TrtPast(merged)
        chunks = []
        for piece in input_ids.split(self.max_prompt, dim=1):  # a prompt longer than the profile: feed in parts
            logits, past = self._call(piece, past)
            chunks.append(logits)
        return torch.cat(chunks, dim=1), past

    def truncate_past(self, past: TrtPast, length: int) -> TrtPast:
        """The cache's first `length` positions (speculative decoding's rollback). NEVER RUN, like
        the rest of this runner: written against the same protocol as the tested ORT and torch ones."""
        return TrtPast({n: t[:, :, :length].contiguous() for n, t in past.tensors.items()})

    def _feeds(self, ids: torch.Tensor, past: TrtPast | None) -> dict[str, torch.Tensor]:
        B, T = ids.shape
        P = past.length if past is not None else 0
        dev = self.device
        feeds = {"input_ids": ids, "attention_mask": torch.ones(B, P + T, dtype=torch.int64),
                 "position_ids": torch.arange(P, P + T).expand(B, T)}
        feeds = {n: t.to(dev, self.dtypes[n]).contiguous() for n, t in feeds.items() if n in self.inputs}
        for n in self.past_names:  # prefill: an empty (B, nh, 0, hs) past
            shape = (B, self.shapes[n][1], 0, self.shapes[n][3])
            feeds[n] = past.tensors[n] if past is not None else torch.empty(shape, dtype=self.dtypes[n], device=dev)
        return feeds

    def _call(self, ids: torch.Tensor, past: TrtPast | None) -> tuple[torch.Tensor, TrtPast]:
        ctx = self.context
        feeds = self._feeds(ids, past)
        for name, t in feeds.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise EvalInputError(f"input {name} of shape {tuple(t.shape)} is outside the engine's profile "
                                     f"{self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max)")
            # every input needs a non-null address, an empty past too
            ctx.set_tensor_address(name, t.data_ptr() if t.numel() else self._one_byte.data_ptr())
        missing = ctx.infer_shapes()
        if missing:
            raise RuntimeError(f"TensorRT cannot infer output shapes; unset inputs: {missing}")
        outs = {n: torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=self.dtypes[n], device=self.device)
                for n in self.outputs}
        for name, t in outs.items():
            ctx.set_tensor_address(name, t.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs were written on the default stream
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.stream.synchronize()
        new_past = TrtPast({n: outs[self.present_for[n]] for n in self.past_names})
        return outs["logits"].float(), new_past


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32,
                "int64": torch.int64, "bool": torch.bool, "int8": torch.int8}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    # trt.int64 and trt.bfloat16 exist from TensorRT 9 on; JetPack 6.0 has 8.6
    table = {getattr(trt, name): t for name, t in TORCH_DTYPES.items() if hasattr(trt, name)}
    if dtype not in table:
        raise UserError(f"engine I/O of TensorRT type {dtype} has no torch equivalent")
    return table[dtype]


def open_runner(path: Path, device: str = "cuda:0") -> TrtRunner:
    """Entry point `gpt2_edge.runners: tensorrt`. `path` is model.engine, model.onnx or the step dir."""
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"{reason}; build and run the engine on the target with build_engine.sh")
    step_dir = Path(path).parent if Path(path).suffix else Path(path)
    engine = step_dir / read_spec(step_dir)["engine"]
    if not engine.is_file():
        raise BackendUnavailable(f"{engine} is not built yet: run {step_dir}/build_engine.sh or "
                                 f"python -m export.tensorrt build {step_dir}")
    return TrtRunner(step_dir, device if device.startswith("cuda") else "cuda:0")
