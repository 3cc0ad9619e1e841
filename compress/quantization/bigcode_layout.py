"""GPT-2 written as GPTBigCode, so that stock transformers + compressed-tensors decompress it.

compressed-tensors quantizes and decompresses nn.Linear (and nn.Embedding) modules only; HF GPT-2's
projections are Conv1D, so a GPT-2 checkpoint with packed codes is "loaded" with its projections left
at random. `GPTBigCodeForCausalLM` with `multi_query: false` is GPT-2 computed with nn.Linear: the same
module names (transformer.h.N.attn.c_attn, ...), LayerNorms, learned positions, activation and tied
head, and it gives bit-identical fp32 logits once two things are rewritten:

- projection weights are [out, in] (nn.Linear), where Conv1D stores [in, out];
- c_attn's output rows are ordered per head: (q_h, k_h, v_h) for h in heads, where GPT-2's are
  (q_0..q_H, k_0..k_H, v_0..v_H). Codes, scales and zero points are per output row, so permuting the
  rows moves them without changing one value.

Everything in this module maps between the two forms; the toolkit's loader maps back to GPT-2.
"""

from __future__ import annotations

from typing import Any

import torch

STOCK_MODEL_TYPE = "gpt_bigcode"
STOCK_ARCHITECTURE = "GPTBigCodeForCausalLM"
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# GPT-2 options that GPTBigCode computes differently (or not at all): refused when set.
GPT2_ONLY = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False}


def qkv_order(n_embd: int, n_head: int) -> torch.Tensor:
    """Row r of GPTBigCode's c_attn is row order[r] of GPT-2's (a permutation of 3 * n_embd rows)."""
    head_dim = n_embd // n_head
    return torch.arange(3 * n_embd).view(3, n_head, head_dim).transpose(0, 1).reshape(-1)


def is_qkv(name: str) -> bool:
    return name.endswith(".attn.c_attn")


def rows_to_stock(t: torch.Tensor, n_embd: int, n_head: int) -> torch.Tensor:
    """c_attn tensor whose dim 0 is the output row: GPT-2 order -> GPTBigCode order."""
    return t[qkv_order(n_embd, n_head)].contiguous()


def rows_to_gpt2(t: torch.Tensor, n_embd: int, n_head: int) -> torch.Tensor:
    """Inverse of rows_to_stock."""
    out = torch.empty_like(t)
    out[qkv_order(n_embd, n_head)] = t
    return out


def is_projection(key: str) -> bool:
    """A Conv1D weight or bias of a GPT-2 block (keys of a state dict)."""
    return key.rpartition(".")[0].endswith(PROJECTIONS)


def fp32_tensor_to_stock(key: str, t: torch.Tensor, n_embd: int, n_head: int) -> torch.Tensor:
    """An fp32 state-dict entry of GPT-2 as GPTBigCode stores it (projections transposed, qkv reordered)."""
    if not is_projection(key):
        return t
    if key.endswith(".weight"):
        t = t.t()  # Conv1D (in, out) -> Linear (out, in)
    return rows_to_stock(t, n_embd, n_head) if is_qkv(key.rpartition(".")[0]) else t.contiguous()


def fp32_tensor_to_gpt2(key: str, t: torch.Tensor, n_embd: int, n_head: int) -> torch.Tensor:
    if not is_projection(key):
        return t
    if is_qkv(key.rpartition(".")[0]):
        t = rows_to_gpt2(t, n_embd, n_head)
    return t.t().contiguous() if key.endswith(".weight") else t


def stock_config(gpt2_config: dict[str, Any]) -> dict[str, Any]:
    """config.json of the GPTBigCode form of a GPT-2 config dict."""
    for key, ok in GPT2_ONLY.items():
        if gpt2_config.get(key, ok) != ok:
            raise ValueError(f"config.{key}={gpt2_config[key]} has no GPTBigCode form; "
                             "quantized checkpoints need the default GPT-2 attention")
    return gpt2_config | {"model_type": STOCK_MODEL_TYPE, "architectures": [STOCK_ARCHITECTURE],
                          "multi_query": False, "attention_softmax_in_fp32": True,
                          "scale_attention_softmax_in_fp32": True}


def is_quantized_gpt2(config: dict[str, Any]) -> bool:
    """config.json of a GPT-2 that compress.quantization wrote in the GPTBigCode form."""
    qc = config.get("quantization_config")
    return config.get("model_type") == STOCK_MODEL_TYPE and isinstance(qc, dict) and "gpt2_edge" in qc


def gpt2_config(stock: dict[str, Any]) -> dict[str, Any]:
    """The GPT-2 config dict back from stock_config's output."""
    extra = ("multi_query", "attention_softmax_in_fp32", "scale_attention_softmax_in_fp32")
    return {k: v for k, v in stock.items() if k not in extra} | {"model_type": "gpt2",
                                                                "architectures": ["GPT2LMHeadModel"]}
