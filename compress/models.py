"""Load and save GPT-2 checkpoints and tokenizers.

Every torch step reads and writes a `GPT2LMHeadModel` directory made by `save_pretrained`
(safetensors), with the tokenizer files beside it. Unquantized outputs reload with plain
`GPT2LMHeadModel.from_pretrained(dir)`; quantized ones (packed codes, `quantization_config` in
config.json) reload with `load_model`.

A model directory is checked before anything reads it (`check_gpt2_dir`, at plan time): config.json
is a JSON object with model_type gpt2, every *.safetensors file has a complete header and as many
bytes as the header says, and pickle-only weights (pytorch_model.bin, *.pt, *.ckpt) are refused here,
before transformers could unpickle them. torch and transformers are imported only when a model is
really loaded, so plan errors come back fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import UserError, os_error_of
from compress.model_files import check_config_bounds, check_weights_match_config, read_header, read_json_file

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either set loads a GPT-2 tokenizer


def is_local_source(source: str | Path) -> bool:
    """A model source is a local directory when it exists or is written as a path."""
    s = str(source)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def check_gpt2_dir(path: str | Path) -> Path:
    """Return the directory if it holds a readable GPT-2 checkpoint; raise UserError naming the file if not."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: model directory does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise UserError(f"{path}: not a model directory (no {CONFIG_FILE})")
    config = read_config(path)
    model_type = config.get("model_type")
    from compress.quantization.bigcode_layout import is_quantized_gpt2

    if model_type != "gpt2" and not is_quantized_gpt2(config):  # quantized GPT-2 is stored as GPTBigCode
        raise UserError(f"{config_file}: model_type is {model_type!r}, expected 'gpt2'")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{path}: the weights are a pickle ({', '.join(pickles)}), which can run code when "
                            "loaded, so gpt2-edge refuses it; convert it to model.safetensors on a machine you trust "
                            "(torch.load(file, weights_only=True), then safetensors.torch.save_model)")
        raise UserError(f"{path}: no weights (*.safetensors) next to {CONFIG_FILE}")
    check_config_bounds(config, config_file)
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded: every shard the index names must be there
        try:
            shards = set(read_json_file(index)["weight_map"].values())
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{index}: not a safetensors index (no weight_map)") from None
        missing = sorted(str(s) for s in shards if not (path / str(s)).is_file())
        if missing:
            raise UserError(f"{index}: names shard(s) that are missing: {', '.join(missing)}")
    headers: dict[str, Any] = {}
    for f in weights:
        headers |= read_header(f)
    stock = model_type == "gpt2" and not any(k in config for k in ("quantization_config", "gpt2_edge"))
    check_weights_match_config(headers, config, path, stock)
    return path


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a model directory as a dict; UserError when it is not a JSON object."""
    config_file = Path(path) / CONFIG_FILE
    try:
        config = read_json_file(config_file)
    except OSError as e:
        raise UserError(f"{config_file}: cannot read it ({e.strerror})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


def load_model(source: str | Path, dtype: "torch.dtype | None" = None) -> "GPT2LMHeadModel":
    """Load a GPT-2 from a local directory (never touches the network) or a Hugging Face hub id.

    Checkpoints stored in fp16/bf16 are upcast to `dtype` (fp32 by default: CPU kernels for half
    precision are slow and less exact). The model is returned in eval mode. Only safetensors weights
    are read (use_safetensors=True): nothing is unpickled.
    """
    import torch
    from transformers import GPT2LMHeadModel

    dtype = dtype or torch.float32
    if is_local_source(source):
        path = check_gpt2_dir(source)
        if _is_quantized(path):  # packed low-bit weights: rebuilt by compress.quantization
            from compress.quantization.storage import load_quantized

            return load_quantized(path).eval()
        if _is_factorized(path):  # low-rank factors: rebuilt by compress.lowrank
            from compress.lowrank.modules import load_factorized

            return load_factorized(path).to(dtype).eval()
        try:
            model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=dtype, use_safetensors=True)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise UserError(f"{path}: cannot load the model ({_first_line(e)})") from None
    else:
        try:
            model = GPT2LMHeadModel.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
        except OSError as e:
            raise UserError(f"model {source!r}: cannot load from the Hugging Face hub ({_first_line(e)})") from None
    return model.eval()


def open_quantized_runner(path: str | Path, device: str = "cpu"):
    """The `torch-quantized` runner of the gpt2_edge.runners entry points (pyproject.toml): a quantized
    checkpoint dir (a quantize step's model/ or a save_model output) as a TorchRunner, the way the plan
    runner measures it, for `python -m evalsuite`, which cannot import compress itself."""
    from evalsuite.runner import TorchRunner

    return TorchRunner(load_model(Path(path)), device)


def _first_line(e: BaseException) -> str:
    """The line of an error that says what is wrong (a state_dict error's first size mismatch)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    mismatch = [line for line in lines if line.startswith("size mismatch")]
    if mismatch:
        return f"the weights do not match {CONFIG_FILE}: {mismatch[0]}"
    return lines[0] if lines else type(e).__name__


def _is_factorized(path: Path) -> bool:
    """config.json carries the factorize step's record (compress.lowrank.modules.CONFIG_KEY)."""
    from compress.lowrank.modules import lowrank_record

    return lowrank_record(read_config(path)) is not None


def _is_quantized(path: Path) -> bool:
    """config.json carries a quantization_config (written by compress.quantization)."""
    return "quantization_config" in read_config(path)


def check_tokenizer_dir(path: str | Path) -> Path:
    """A local tokenizer directory holds tokenizer.json or vocab.json + merges.txt; UserError if not."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: tokenizer directory does not exist")
    if not any(all((path / f).exists() for f in files) for files in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
                        "copy the tokenizer next to the model or set `tokenizer:` in the plan")
    tokenizer_size(path)  # every tokenizer file is a regular file of sane size and shape
    return path


MAX_TOKENIZER_BYTES = 64 << 20  # GPT-2's tokenizer.json is 3.5 MB


def tokenizer_size(path: Path) -> int:
    """How many token ids the tokenizer of a directory can produce (its vocabulary plus added tokens),
    from its files alone; UserError naming the file when one is not what a GPT-2 tokenizer writes."""
    from compress.hashing import regular_file

    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json"):
        if (path / name).exists():
            regular_file(path / name)
    added: set[int] = set()
    if (path / "tokenizer.json").exists():
        spec = read_json_file(path / "tokenizer.json", MAX_TOKENIZER_BYTES)
        vocab = spec.get("model", {}).get("vocab") if isinstance(spec, dict) and isinstance(spec.get("model"), dict) \
            else None
        if not isinstance(vocab, dict):
            raise UserError(f"{path / 'tokenizer.json'}: has no model.vocab mapping; not a BPE tokenizer file")
        added = {t.get("id") for t in spec.get("added_tokens") or [] if isinstance(t, dict) and type(t.get("id")) is int}
    else:
        vocab = read_json_file(path / "vocab.json", MAX_TOKENIZER_BYTES)
        if not isinstance(vocab, dict):
            raise UserError(f"{path / 'vocab.json'}: expected a JSON object of token -> id, got {type(vocab).__name__}")
        if (path / "added_tokens.json").exists():
            extra = read_json_file(path / "added_tokens.json")
            if not isinstance(extra, dict):
                raise UserError(f"{path / 'added_tokens.json'}: expected a JSON object of token -> id")
            added = {i for i in extra.values() if type(i) is int}
    ids = [i for i in vocab.values() if type(i) is int] + sorted(added)
    if len(ids) != len(vocab) + len(added) or any(i < 0 for i in ids):
        raise UserError(f"{path}: the tokenizer's vocabulary has ids that are not non-negative integers")
    return max(ids, default=-1) + 1


def load_tokenizer(source: str | Path) -> "PreTrainedTokenizerBase":
    """Load the tokenizer stored with a model directory (or a hub id, or a tokenizer directory)."""
    from transformers import AutoTokenizer

    local = is_local_source(source)
    if local:
        check_tokenizer_dir(source)
    try:
        return AutoTokenizer.from_pretrained(str(Path(source).expanduser()) if local else str(source),
                                             local_files_only=local)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{source}: cannot load a tokenizer ({_first_line(e)})") from None
    except Exception as e:  # the tokenizers library raises a bare Exception for a corrupt file; nothing else
        if type(e) is not Exception:
            raise
        raise UserError(f"{source}: cannot load a tokenizer; a tokenizer file is corrupt ({_first_line(e)})") from None


def save_model(model: "GPT2LMHeadModel", out_dir: str | Path,
               tokenizer: "PreTrainedTokenizerBase | None" = None) -> Path:
    """Save with save_pretrained (safetensors) and, when given, the tokenizer beside it.

    config.json carries no `_name_or_path` (where the model was loaded from): it would make the
    directory's content, and so every content hash of it, depend on the run directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors import SafetensorError

    try:
        if getattr(model.config, "quantization_config", None) is not None:
            from compress.quantization.storage import save_quantized_model

            save_quantized_model(model, out_dir)  # packed codes + scales, not fp32 weights
        else:
            model.save_pretrained(out_dir, safe_serialization=True)
    except SafetensorError as e:  # a full disk reaches us as text inside a safetensors error
        raise (os_error_of(e, out_dir) or e) from None
    _drop_name_or_path(out_dir / CONFIG_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _drop_name_or_path(config_file: Path) -> None:
    """Also adds `n_ctx` (= n_positions) to a GPT-2 config: transformers no longer writes it and
    llama.cpp's convert_hf_to_gguf.py reads it (KeyError 'n_ctx' without it)."""
    from compress.config_json import with_n_ctx

    config = json.loads(config_file.read_text())
    ctx = with_n_ctx(config)
    if "_name_or_path" in config or ctx is not config:
        config = {k: v for k, v in ctx.items() if k != "_name_or_path"}
        tmp = config_file.with_name(config_file.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(config_file)
