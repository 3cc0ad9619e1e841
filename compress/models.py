"""Load and save GPT-2 checkpoints and tokenizers; tiny configs for tests.

Every torch step reads and writes a stock `GPT2LMHeadModel` directory made by `save_pretrained`
(safetensors), with the tokenizer files beside it, so any step's output reloads with plain
`GPT2LMHeadModel.from_pretrained(dir)` and no code from this package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from compress.errors import UserError

CONFIG_FILE = "config.json"


def is_local_source(source: str | Path) -> bool:
    """A model source is a local directory when it exists or is written as a path."""
    s = str(source)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def check_gpt2_dir(path: str | Path) -> Path:
    """Return the directory if it holds a GPT-2 checkpoint; raise UserError naming the path if not."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: model directory does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path}: not a model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config_file}: invalid JSON ({e})") from None
    model_type = config.get("model_type")
    from compress.quantization.bigcode_layout import is_quantized_gpt2

    if model_type != "gpt2" and not is_quantized_gpt2(config):  # quantized GPT-2 is stored as GPTBigCode
        raise UserError(f"{config_file}: model_type is {model_type!r}, expected 'gpt2'")
    if not any(path.glob("*.safetensors")) and not (path / "pytorch_model.bin").exists():
        raise UserError(f"{path}: no weights (*.safetensors) next to {CONFIG_FILE}")
    return path


def load_model(source: str | Path, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """Load a GPT-2 from a local directory (never touches the network) or a Hugging Face hub id.

    Checkpoints stored in fp16/bf16 are upcast to `dtype` (fp32 by default: CPU kernels for half
    precision are slow and less exact). The model is returned in eval mode.
    """
    if is_local_source(source):
        path = check_gpt2_dir(source)
        if _is_quantized(path):  # packed low-bit weights: rebuilt by compress.quantization
            from compress.quantization.storage import load_quantized

            return load_quantized(path).eval()
        model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    else:
        try:
            model = GPT2LMHeadModel.from_pretrained(str(source), dtype=dtype)
        except OSError as e:
            raise UserError(f"model {source!r}: cannot load from the Hugging Face hub ({e})") from None
    return model.eval()


def _is_quantized(path: Path) -> bool:
    """config.json carries a quantization_config (written by compress.quantization)."""
    return "quantization_config" in json.loads((path / CONFIG_FILE).read_text())


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer stored with a model directory (or a hub id, or a tokenizer directory)."""
    local = is_local_source(source)
    if local and not Path(source).expanduser().is_dir():
        raise UserError(f"{source}: tokenizer directory does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(Path(source).expanduser()) if local else str(source),
                                             local_files_only=local)
    except (OSError, ValueError) as e:
        raise UserError(f"{source}: cannot load a tokenizer ({e})") from None


def save_model(model: GPT2LMHeadModel, out_dir: str | Path,
               tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Save with save_pretrained (safetensors) and, when given, the tokenizer beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "quantization_config", None) is not None:
        from compress.quantization.storage import save_quantized_model

        save_quantized_model(model, out_dir)  # packed codes + scales, not fp32 weights
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_config(vocab_size: int = 256, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                n_positions: int = 128, n_inner: int | None = None) -> GPT2Config:
    """A small GPT-2 config for tests and quick experiments (no dropout, so outputs are exact)."""
    return GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      n_positions=n_positions, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)


def tiny_model(seed: int = 0, **config_kwargs) -> GPT2LMHeadModel:
    """A randomly initialised tiny GPT-2 (see tiny_config), in eval mode."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(**config_kwargs)).eval()

