"""Measure one model outside a plan: a checkpoint directory, an ONNX file, or a step directory of a run.

Whatever the input, the result is the same metrics dict (evalsuite.metrics) a plan's step gets, so
`python -m evalsuite MODEL --data PATH` prints the same row as the run's report.

- a checkpoint directory: a stock GPT2LMHeadModel (config.json + safetensors), loaded with plain
  `from_pretrained(local_files_only=True)`. A quantized checkpoint (a quantize step's model/ or a
  save_model output: `quantization_config` in config.json, the GPTBigCode form) needs gpt2-edge's
  compress package, which evalsuite does not import: it is opened through the `torch-quantized`
  runner plugin that compress registers (gpt2_edge.runners entry points), like ONNX through export's.
- an ONNX file (or a directory holding one): through the `onnxruntime` runner plugin.
- a step directory (has step.json): its artifact and backend are read from step.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from evalsuite.backends import open_backend
from evalsuite.errors import BackendUnavailable
from evalsuite.data import read_text, tokenize
from evalsuite.errors import EvalInputError, ToolkitError
from evalsuite.metrics import KINDS, EvalSettings, evaluate, gpt2_facts
from evalsuite.runner import Runner, TorchRunner
from evalsuite.size import bytes_on_disk
from evalsuite.tokenizer_files import check_tokenizer_files

SUFFIX_BACKENDS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
QUANTIZED_BACKEND = "torch-quantized"  # compress.models:open_quantized_runner, an entry point (pyproject.toml)
QUANTIZED_HINT = ("quantized checkpoints load only with gpt2-edge's compress package, whose `torch-quantized` runner "
                  "is not registered here: reinstall gpt2-edge (pip install -e .), or measure it inside a plan "
                  "(python -m compress.run), or pass its ONNX export")


@dataclass
class Artifact:
    """What to measure: the file or directory a runner opens, and where its config.json lives."""

    name: str  # the row's step label
    path: Path
    backend: str
    summary: str = ""

    @property
    def config_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent


def find_artifact(path: str | Path) -> Artifact:
    """Decide what `path` is (step dir, checkpoint dir, ONNX/engine file or dir); one-line error if none."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EvalInputError(f"{path}: no such file or directory")
    if path.is_file():
        backend = SUFFIX_BACKENDS.get(path.suffix)
        if backend is None:
            raise EvalInputError(f"{path}: not a model (expected a directory, or a file ending in "
                                 f"{', '.join(SUFFIX_BACKENDS)})")
        return Artifact(path.stem, path, backend)
    if (path / "step.json").is_file():
        info = json.loads((path / "step.json").read_text())
        rel = info.get("artifact") or info.get("model_dir")
        if not rel:
            raise EvalInputError(f"{path / 'step.json'}: names neither an artifact nor a model_dir")
        return Artifact(path.name, path / rel, info.get("backend") or "torch", info.get("summary") or "")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return Artifact(path.name, path, "torch")
    onnx = sorted(path.glob("*.onnx"))
    if len(onnx) == 1 or (path / "model.onnx").is_file():
        file = path / "model.onnx" if (path / "model.onnx").is_file() else onnx[0]
        return Artifact(path.name, file, "onnxruntime")
    raise EvalInputError(f"{path}: not a model directory (no step.json, no config.json with *.safetensors, "
                         f"no single .onnx file)")


def load_torch_runner(path: Path, device: str = "cpu") -> TorchRunner:
    """A stock GPT-2 checkpoint directory as a TorchRunner; refuses anything that is not stock."""
    from transformers import GPT2LMHeadModel

    config = _config(path)
    if config.get("model_type") != "gpt2":
        raise EvalInputError(f"{path / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'gpt2'")
    if "quantization_config" in config:
        raise EvalInputError(f"{path}: quantized checkpoint; {QUANTIZED_HINT}")
    try:
        model, info = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # truncated file, shapes vs config.json
        raise EvalInputError(f"{path}: cannot load the checkpoint ({str(e).splitlines()[0]})") from None
    odd = info["unexpected_keys"] + info["missing_keys"]
    if odd:  # e.g. packed int4 weights and scales that a stock GPT-2 has no place for
        raise EvalInputError(f"{path}: not a stock GPT-2 checkpoint ({len(odd)} tensors do not match, "
                             f"e.g. {odd[0]}); if it is quantized: {QUANTIZED_HINT}")
    return TorchRunner(model, device)


def is_quantized_checkpoint(config: dict[str, Any]) -> bool:
    """config.json of a quantized checkpoint gpt2-edge wrote (compressed-tensors on the GPTBigCode form, or
    bitsandbytes on the GPT-2 form): anything with a quantization_config, or a GPTBigCode model."""
    return "quantization_config" in config or config.get("model_type") == "gpt_bigcode"


def open_artifact(art: Artifact, device: str = "cpu") -> Runner:
    if art.backend == "torch" and art.path.is_dir() and is_quantized_checkpoint(_config(art.path)):
        try:
            return open_backend(QUANTIZED_BACKEND, art.path, device)
        except BackendUnavailable as e:
            raise EvalInputError(f"{art.path}: quantized checkpoint; {QUANTIZED_HINT} ({e})") from None
        except EvalInputError:
            raise
        except ToolkitError as e:  # compress's UserError: the dir is not a checkpoint compress can rebuild
            raise EvalInputError(f"{art.path}: quantized checkpoint that gpt2-edge cannot load: {e}") from None
    if art.backend == "torch":
        return load_torch_runner(art.path, device)
    try:
        return open_backend(art.backend, art.path, device)
    except BackendUnavailable as e:
        raise EvalInputError(f"{art.path}: cannot run it here: {e}") from None


def load_tokenizer(art: Artifact, tokenizer_dir: str | Path | None = None):
    """--tokenizer, else the one beside the artifact, else the run's base model's (for a step dir)."""
    from transformers import AutoTokenizer

    candidates = [Path(tokenizer_dir)] if tokenizer_dir else [art.config_dir, art.config_dir.parent.parent
                                                              / "00-base" / "model"]
    for d in candidates:
        if d.is_dir() and any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            check_tokenizer_files(d)
            try:
                return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            except (OSError, ValueError) as e:
                raise EvalInputError(f"{d}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    raise EvalInputError(f"{candidates[0]}: no tokenizer found; pass --tokenizer DIR")


def evaluate_path(model: str | Path, data: str | Path, settings: EvalSettings, device: str = "cpu",
                  tokenizer_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The metrics dict of one model on one text, as a plan's step would record it."""
    art = find_artifact(model)
    if not (art.config_dir / "config.json").is_file():
        raise EvalInputError(f"{art.config_dir}: no config.json beside the model (the ONNX export writes one)")
    text = read_text(data)  # a bad --data path fails before any model loads
    tokenizer = load_tokenizer(art, tokenizer_dir)
    eval_ids = tokenize(text, tokenizer)
    runner = open_artifact(art, device)
    facts = gpt2_facts(_config(art.config_dir), bytes_on_disk(art.config_dir, weights_only=True))
    m = evaluate(runner, eval_ids, facts, art.path, settings, step=art.name, kind=KINDS.get(art.backend, art.backend),
                 backend=art.backend, device=device, data_label=str(data), progress=progress, tokenizer=tokenizer)
    m["summary"] = art.summary or f"{art.path} evaluated standalone"
    return m


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalInputError(f"{file}: cannot read it ({e})") from None
