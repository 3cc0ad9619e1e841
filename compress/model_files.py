"""What a model directory holds, read from its headers alone, before any byte of weights is read.

A model directory comes from the user and may be hostile: a FIFO named model.safetensors, a header of
a million empty tensors, a sparse 64 GB tensor, a config.json that asks for 100,000 layers beside
2-layer weights. Everything here is bounded: only regular files are opened, headers and configs have a
size limit, every tensor's declared bytes must equal its shape times its dtype's size and the file's
length, and the config's shapes must agree with the weights' shapes. So a mismatch is one line at plan
time, before a digest reads the data or a model is built.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.hashing import regular_file

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB
MAX_HEADER_BYTES = 16 << 20  # GPT-2 XL's header is ~40 KB; quantized layouts a few times that
MAX_TENSORS = 20_000  # per file: GPT-2 XL has ~600 tensors, a quantized layout a few per linear
MAX_WEIGHT_BYTES = 32 << 30  # GPT-2 XL in fp32 is 6.4 GB: more is no GPT-2 this toolkit can shrink here
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
# Bounds of a GPT-2 config that any real checkpoint is far inside; past them a model cannot be built here.
CONFIG_BOUNDS = {"n_layer": 1000, "n_embd": 65_536, "n_head": 1024, "n_positions": 1 << 20, "vocab_size": 10_000_000,
                 "n_inner": 1 << 20}


def read_json_file(path: Path, limit: int = MAX_CONFIG_BYTES) -> Any:
    """A small JSON file (a config, an index), refused unopened if it is not a regular file or too big."""
    st = regular_file(path)
    if st.st_size > limit:
        raise UserError(f"{path}: {st.st_size:,} bytes is more than a {path.name} can be ({limit:,})")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 JSON (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None


def read_header(file: Path) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file declares, {name: {dtype, shape, data_offsets}}, checked against
    each other and the file's size; UserError naming the file when anything does not add up."""
    def bad(why: str) -> UserError:
        return UserError(f"{file}: not a readable safetensors file ({why}); it is truncated or corrupt: "
                         "save or copy the model again")
    st = regular_file(file)
    size = st.st_size
    if size > MAX_WEIGHT_BYTES:
        raise bad(f"{size:,} bytes, more than the {MAX_WEIGHT_BYTES:,} of any GPT-2 this toolkit takes")
    if size > 1 << 20 and st.st_blocks * 512 < size // 2:  # weights saved by any writer have no holes
        raise bad(f"a sparse file: {size:,} bytes long but only {st.st_blocks * 512:,} stored")
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"header length {n:,} exceeds the file's {size:,} bytes or the {MAX_HEADER_BYTES:,} limit")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise bad(f"it declares {len(header):,} tensors, more than the {MAX_TENSORS:,} a GPT-2 file can have")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"tensor {name!r} is not described by an object")
        shape, dtype, offsets = entry.get("shape"), entry.get("dtype"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 1 << 40 for d in shape)):
            raise bad(f"tensor {name!r} has an invalid shape {str(shape)[:60]}")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor {name!r} has an unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has no valid data_offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise bad(f"tensor {name!r} of shape {shape} {dtype} declares {offsets[1] - offsets[0]:,} bytes")
        spans.append(offsets)
    if max((e for _, e in spans), default=0) != size - 8 - n:
        raise bad(f"the header describes {max((e for _, e in spans), default=0):,} bytes of tensors, "
                  f"the file holds {size - 8 - n:,}")
    return header


def check_config_bounds(config: dict[str, Any], where: Path) -> None:
    """The shape keys of a GPT-2 config are positive integers within what can be built here."""
    for key, limit in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is None and key in ("n_inner",):
            continue
        if type(value) is not int or not 1 <= value <= limit:
            raise UserError(f"{where}: {key} must be an integer from 1 to {limit:,} (got {str(value)[:40]})")
    if config["n_embd"] % config["n_head"]:
        raise UserError(f"{where}: n_embd ({config['n_embd']}) is not divisible by n_head ({config['n_head']})")


_BLOCK = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")


def expected_gpt2_shapes(config: dict[str, Any]) -> dict[str, list[int]]:
    """Tensor name (without 'transformer.') -> shape of a stock GPT2LMHeadModel of this config."""
    d, inner, v, p = config["n_embd"], config.get("n_inner") or 4 * config["n_embd"], config["vocab_size"], \
        config["n_positions"]
    out = {"wte.weight": [v, d], "wpe.weight": [p, d], "ln_f.weight": [d], "ln_f.bias": [d]}
    for i in range(config["n_layer"]):
        out |= {f"h.{i}.ln_1.weight": [d], f"h.{i}.ln_1.bias": [d], f"h.{i}.ln_2.weight": [d],
                f"h.{i}.ln_2.bias": [d], f"h.{i}.attn.c_attn.weight": [d, 3 * d], f"h.{i}.attn.c_attn.bias": [3 * d],
                f"h.{i}.attn.c_proj.weight": [d, d], f"h.{i}.attn.c_proj.bias": [d],
                f"h.{i}.mlp.c_fc.weight": [d, inner], f"h.{i}.mlp.c_fc.bias": [inner],
                f"h.{i}.mlp.c_proj.weight": [inner, d], f"h.{i}.mlp.c_proj.bias": [d]}
    return out


def check_weights_match_config(headers: dict[str, dict[str, Any]], config: dict[str, Any], where: Path,
                               stock: bool) -> None:
    """The weights' blocks and shapes are those the config describes. For a stock GPT-2 (`stock`) every
    tensor is checked by name and shape; for another layout of ours, the number of blocks."""
    blocks = {int(m.group(1)) for name in headers if (m := _BLOCK.match(name))}
    if blocks and (max(blocks) + 1 != config["n_layer"] or len(blocks) != config["n_layer"]):
        raise UserError(f"{where}: config.json says n_layer {config['n_layer']}, the weights have "
                        f"{len(blocks)} block(s) (h.0 .. h.{max(blocks)})")
    expected = expected_gpt2_shapes(config)
    declared = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in headers.values())
    fp32 = 4 * sum(math.prod(s) for s in expected.values())
    if declared > 2 * fp32 + (1 << 20):  # any layout of ours is at most the fp32 model plus scales
        raise UserError(f"{where}: the weights declare {declared:,} bytes, more than twice the {fp32:,} of an fp32 "
                        "GPT-2 of this config.json")
    if not stock:
        return
    for name, entry in headers.items():
        key = name.removeprefix("transformer.")
        if key == "lm_head.weight":
            want = [config["vocab_size"], config["n_embd"]]
        elif re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", key):
            continue  # buffers older transformers saved; ignored on load
        else:
            want = expected.get(key)
        if want is None:
            raise UserError(f"{where}: tensor {name!r} is not part of a GPT-2 of this config.json")
        if entry["shape"] != want:
            raise UserError(f"{where}: tensor {name!r} has shape {entry['shape']}, config.json implies {want}")
    missing = sorted(set(expected) - {n.removeprefix("transformer.") for n in headers})
    if missing:
        raise UserError(f"{where}: the weights lack {len(missing)} tensor(s) of this config, e.g. {missing[0]!r}")
