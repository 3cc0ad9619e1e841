"""Resumable training checkpoints without pickle: weights and optimizer moments as safetensors.

Layout of a checkpoint directory:
    model/             save_pretrained (safetensors)
    optimizer.safetensors   AdamW exp_avg / exp_avg_sq / step per parameter index
    state.json         the trainer's own counters (step, tokens seen, best eval, ...)
Written to a temporary sibling and renamed, so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compress.errors import UserError, os_error_of

STATE_FILE = "state.json"


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tensors = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
    write_safetensors(tensors, tmp / "optimizer.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    old = _previous(path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _previous(path: Path) -> Path:
    """Where the last checkpoint sits while a new one is renamed into place."""
    return path.with_name(path.name + ".old")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore model weights and optimizer moments in place; return the trainer state (None: no checkpoint).

    An unreadable checkpoint (a disk that filled up under it, a file edited by hand) is a UserError
    naming it, never a half-restored model."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        path = _previous(path)  # killed between the two renames of save_checkpoint
        if not (path / STATE_FILE).is_file():
            return None
    try:
        return _restore(path, model, optimizer)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise UserError(f"{path}: the training checkpoint cannot be read ({str(e).strip().splitlines()[0]}); delete "
                        "it and rerun the same command: the step restarts from its beginning") from None


def _restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from transformers.modeling_utils import load_sharded_checkpoint

    model_dir = path / "model"
    weights = model_dir / "model.safetensors"
    if weights.exists():
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        # The tied LM head is not stored separately; anything else missing is a real mismatch.
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
            raise RuntimeError(f"{path}: checkpoint does not match the model ({missing=}, {unexpected=})")
    else:
        load_sharded_checkpoint(model, model_dir)
    device = next(model.parameters()).device
    tensors = load_file(str(path / "optimizer.safetensors"))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        entries = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        if entries:
            optimizer.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in entries.items()}
    state = json.loads((path / STATE_FILE).read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{STATE_FILE} holds no step count")
    return state


def _untied(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without tensors that share storage with an earlier one (the tied LM head)."""
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v.detach().cpu().contiguous()
    return out


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """module's weights as safetensors, written to a temporary file and renamed (a kill leaves the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    write_safetensors(_untied(module), tmp)
    os.replace(tmp, path)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its I/O failures (a full disk) raised as the OSError they are, naming the file."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        raise (os_error_of(e, path) or e) from None


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load weights saved by save_weights (or a state_dict); only tied copies may be missing."""
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"weights do not match the model ({missing=}, {unexpected=})")
