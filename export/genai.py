"""genai_config.json beside an ONNX export, so ONNX Runtime GenAI (onnxruntime-genai) generates from the
export directory:

    import onnxruntime_genai as og
    model = og.Model("runs/x/03-export-onnx")          # reads genai_config.json, model.onnx, tokenizer.json

onnxruntime-genai has no builder for GPT-2; its `gpt2` model type expects the old combined-cache
layout, so the config says `type: decoder` and names our graph's own inputs and outputs (io.json:
input_ids, attention_mask, position_ids, past_key_values.N.key/value -> logits, present.N.key/value).
The decoder is model.onnx: the fused model_decode.onnx (GroupQueryAttention over shared buffers) is not
loadable by genai (it asks for `seqlens_k`). Past and present are separate tensors of different
lengths in our graph, so `past_present_share_buffer` is false.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.onnx import LOGITS, PAST_KEY, PRESENT_KEY

GENAI_FILE = "genai_config.json"


def genai_config(io: dict[str, Any], config: dict[str, Any], bos: int | None, eos: int | None,
                 onnx_file: str = "model.onnx") -> dict[str, Any]:
    """The config for the graph described by io.json (describe_io) of a GPT-2 with config.json `config`."""
    kv = io["kv_cache"]
    if kv is None:
        raise ValueError("the graph has no KV cache inputs: onnxruntime-genai's decoder needs them")
    names = {v["name"] for v in io["inputs"]}
    inputs = {k: k for k in ("input_ids", "attention_mask", "position_ids") if k in names}
    n_positions = int(config["n_positions"])
    eos = eos if eos is not None else config.get("eos_token_id")
    bos = bos if bos is not None else config.get("bos_token_id", eos)
    return {
        "model": {
            "type": "decoder",
            "context_length": n_positions,
            "vocab_size": int(config["vocab_size"]),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
            "decoder": {
                "filename": onnx_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "hidden_size": int(config["n_embd"]),
                "head_size": kv["head_dim"],
                "num_attention_heads": kv["n_head"],
                "num_key_value_heads": kv["n_head"],
                "num_hidden_layers": kv["n_layer"],
                "inputs": {**inputs,
                           "past_key_names": PAST_KEY.format(layer="%d", kind="key"),
                           "past_value_names": PAST_KEY.format(layer="%d", kind="value")},
                "outputs": {"logits": LOGITS,
                            "present_key_names": PRESENT_KEY.format(layer="%d", kind="key"),
                            "present_value_names": PRESENT_KEY.format(layer="%d", kind="value")},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": n_positions,
                   "min_length": 0, "temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0,
                   "length_penalty": 1.0, "early_stopping": True, "no_repeat_ngram_size": 0,
                   "diversity_penalty": 0.0, "past_present_share_buffer": False},
    }


def write_genai_config(step_dir: Path, io: dict[str, Any], tokenizer: Any, onnx_file: str = "model.onnx") -> Path:
    """genai_config.json in step_dir (config.json and the tokenizer files are already there)."""
    config = json.loads((step_dir / "config.json").read_text())
    out = genai_config(io, config, getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None),
                       onnx_file)
    path = step_dir / GENAI_FILE
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path
