"""`- export: {format: gguf, type: q8_0}`: the model as one GGUF file that stock llama.cpp loads.

    type f32 | f16 | q8_0 | q4_0      the block projections' type (1-D tensors stay f32, as in llama.cpp)
    embedding_type (default: type, q8_0 for q4_0)   token table (= the tied head); positions stay f16/f32

Written with the `gguf` package, in the layout of llama.cpp's GPT-2 loader (src/models/gpt2.cpp):
arch `gpt2`; hyper-parameters from the model itself (feed_forward_length = n_inner, so pruned widths
load; context_length = n_positions); token_embd, position_embd, blk.N.{attn_norm, attn_qkv,
attn_output, ffn_norm, ffn_up, ffn_down}, output_norm; a tied head has no `output.weight` (llama.cpp
then reads token_embd). Matrices are [out, in] rows (HF's Conv1D stores [in, out]); q, k, v stay in
c_attn's order, which is the order llama.cpp splits attn_qkv in. The byte-level BPE tokenizer is
embedded (tokenizer.ggml.model gpt2, pre gpt-2, tokens, types, merges, bos/eos).

After a quantize step, a grid that equals a GGUF block type is carried code for code: symmetric 4-bit
groups (zero 8) of a multiple of 32 channels are Q4_0 blocks (d = the group's scale, nibble = code),
symmetric 8-bit ones are Q8_0 (int8 = code - 128); only the scale is rounded to fp16, the block scale
type. Any other grid is quantized by gguf.quants from the dequantized weights, and the summary says so.

Validation reads the written file back (export.gguf_runner: metadata checked against tensor shapes,
tensors dequantized by gguf.quants, GPT-2 forward in torch) and compares it with the torch model. It
does not run llama.cpp: `run_llama_cpp.sh` beside the file has the commands for that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field

from compress.errors import UserError
from compress.plan_state import Check, PlanState, Problem
from export.target import Built, ExportTarget, register_target

if TYPE_CHECKING:
    from torch import nn

    from compress.quantization.handoff import LinearCodes
    from compress.step_api import StepContext, StepOutput

GGUF_FILE = "model.gguf"
SCRIPT = "run_llama_cpp.sh"
GgufType = Literal["f32", "f16", "q8_0", "q4_0"]
BLOCK = {"f32": 1, "f16": 1, "q8_0": 32, "q4_0": 32}  # elements per block along a row
BITS = {"q8_0": 8, "q4_0": 4}
PROJECTIONS = {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up",
               "mlp.c_proj": "ffn_down"}
NORMS = {"ln_1": "attn_norm", "ln_2": "ffn_norm"}


def ggml_type(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


@register_target
class GgufExport(ExportTarget):
    """One GGUF file for llama.cpp (arch gpt2), validated by reading it back."""

    format: Literal["gguf"]
    type: GgufType = Field("f16", description="type of the block projections (q8_0/q4_0: blocks of 32 along "
                                              "each row; 1-D tensors stay f32)")
    embedding_type: GgufType | None = Field(
        None, description="token table (read by the tied head); default: type, but q8_0 for q4_0 (llama.cpp's "
                          "own Q4_0 keeps the head at 8 bits or more). The position table is f32 or f16")

    @property
    def table_type(self) -> str:
        return self.embedding_type or ("q8_0" if self.type == "q4_0" else self.type)

    def check(self, state: PlanState) -> Check:
        from dataclasses import replace

        problems = []
        q = state.quantized
        if q is not None and not q.exportable:
            problems.append(Problem(f"the model quantized by {q.by} (method {q.method}) keeps no integer codes "
                                    "this export can read; quantize with rtn/gptq/awq, or export the fp32 model", ""))
        if q is not None and q.exportable and q.grids and self.type in BITS:
            problems.append(Problem(f"{q.by} sets a precision per module: each matrix is written at its own type "
                                    "(8-bit -> q8_0, 4-bit groups of 32k -> q4_0, float -> f16), other grids "
                                    f"re-quantized to {self.type}", "type", note=True))
        elif q is not None and q.exportable and q.grids:
            problems.append(Problem(f"{q.by} sets a precision per module: every matrix is written dequantized, as "
                                    f"{self.type}", "type", note=True))
        elif q is not None and q.exportable and not carries_grid(q.bits, q.group_size, q.sym, self.type):
            grid = f"{q.by}'s grid ({q.bits}-bit, group {q.group_size or 'per-channel'}, {'sym' if q.sym else 'asym'})"
            problems.append(Problem(f"{grid} is not a {self.type} block: its dequantized weights are re-quantized "
                                    f"to {self.type}" if self.type in BITS else
                                    f"{grid} is written dequantized, as {self.type}", "type", note=True))
        s = state.shape
        if s is None:
            problems.append(Problem(f"row sizes are checked when the model loads ({state.unknown})", note=True))
            return replace(state, artifact="gguf"), problems
        rows = {"n_embd": s.n_embd, "n_inner": s.n_inner}
        for key, t in (("type", self.type), ("embedding_type", self.table_type)):
            block = BLOCK[t]
            for dim, width in rows.items() if key == "type" else [("n_embd", s.n_embd)]:
                if width % block:
                    origin = state.origin(dim)
                    fix = origin.fix(dim, block) if origin.fix else None
                    problems.append(Problem(
                        f"{t} stores rows in blocks of {block} but {dim} = {width} (made by {origin.by}) is not a "
                        f"multiple: llama.cpp cannot load it; use type f16"
                        + (f", or {fix} in {origin.by}" if fix else f", or a width that is a multiple of {block}"),
                        key))
        return replace(state, artifact="gguf"), problems

    # -- hooks -------------------------------------------------------------------------------------------

    def build(self, model: "nn.Module", records: dict, ctx: "StepContext") -> Built:
        from export.validate import Limits

        path = ctx.out_dir / GGUF_FILE
        how = write_gguf(model, records, ctx.tokenizer(), path, self.type, self.table_type)
        v = self.validation
        carried = [n for n, h in how.items() if h == "codes"]
        requantized = [n for n, h in how.items() if h == "quantized (from dequantized codes)"]
        torch_model = f"torch {'quantized' if records else 'fp32'} model"
        if any(h.startswith("quantized") for h in how.values()):  # gguf.quants rounded some weights
            limits, ref = Limits(max_ppl_rel=v.approx_ppl_rel), f"{torch_model} (GGUF re-quantized)"
        elif records or "f16" in (self.type, self.table_type):  # the same codes, fp16 block scales / weights
            limits, ref = Limits(max_ppl_rel=v.ppl_rel), f"{torch_model} (the same weights)"
        else:
            limits, ref = Limits(max_abs_logit=v.max_abs_logit), "torch fp32"
        what = f"GGUF {self.type} (token table {self.table_type})"
        if records and self.type not in BITS:
            what += f", the {len(records)} quantized layers written dequantized"
        elif records:
            what += (f", {len(carried)} of {len(records)} quantized layers carried code for code"
                     + (f", {len(requantized)} re-quantized from dequantized weights" if requantized else ""))
        info = {"type": self.type, "embedding_type": self.table_type, "tensors": how,
                "bytes": path.stat().st_size}
        return Built(artifact=Path(GGUF_FILE), backend="llama.cpp", limits=limits, reference=ref,
                     summary=what, info=info)

    def runner(self, built: Built, ctx: "StepContext"):
        from export.gguf_runner import GgufReadBack

        return GgufReadBack(ctx.out_dir / built.artifact, str(ctx.device))

    def finish(self, built: Built, validation: dict, ctx: "StepContext") -> "StepOutput":
        from compress.quantization.storage import write_gpt2_config

        write_gpt2_config(ctx.input_dir, ctx.out_dir)  # n_ctx included: what the plan runner reads
        ctx.tokenizer().save_pretrained(ctx.out_dir)
        (ctx.out_dir / SCRIPT).write_text(run_script(GGUF_FILE))
        (ctx.out_dir / SCRIPT).chmod(0o755)
        out = super().finish(built, validation, ctx)
        out.summary += f"; {built.info['bytes'] / 2**20:.1f} MiB, run in llama.cpp with {SCRIPT}"
        return out


# -- writing ---------------------------------------------------------------------------------------------

def carries_grid(bits: int, group_size: int | None, sym: bool, t: str) -> bool:
    """Whether a quantize step's grid is exactly a block type (group_size None: per channel, which a
    row of a multiple of 32 channels also is)."""
    return t in BITS and bits == BITS[t] and sym and (group_size is None or group_size % BLOCK[t] == 0)


def code_blocks(ql: "LinearCodes", t: str) -> np.ndarray | None:
    """The GGUF blocks of a quantize step's codes, byte for byte (None when the grid is not type t):
    Q8_0 block = fp16 d + 32 int8; Q4_0 block = fp16 d + 16 bytes, code j in the low nibble of byte j,
    code j + 16 in its high nibble (gguf.quants' layout)."""
    zero = 2 ** (ql.bits - 1)
    if not carries_grid(ql.bits, ql.group_size, True, t) or ql.in_features % BLOCK[t]:
        return None
    if not bool((ql.zeros == zero).all()):
        return None
    rows, cols = ql.q.shape
    per_group = ql.group_size // BLOCK[t]
    d16 = np.repeat(ql.scales.numpy().astype(np.float32), per_group, axis=1).astype(np.float16)  # (rows, nb)
    if not np.isfinite(d16).all() or ((d16 == 0) & (np.repeat(ql.scales.numpy(), per_group, 1) != 0)).any():
        return None  # a scale fp16 cannot hold
    q = ql.q.numpy().astype(np.uint8).reshape(rows, cols // 32, 32)
    if t == "q8_0":
        body = (q.astype(np.int16) - zero).astype(np.int8).view(np.uint8)
    else:
        body = q[..., :16] | (q[..., 16:] << np.uint8(4))
    blocks = np.concatenate([d16.reshape(rows, -1, 1).view(np.uint8), body], axis=-1)  # (rows, nb, 2 + ...)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def encode(w: np.ndarray, t: str, ql: "LinearCodes | None") -> tuple[np.ndarray, str]:
    """(data for GGUFWriter.add_tensor, how): "codes" (carried), "quantized" (gguf.quants on the
    weights; "quantized (from codes)" when they were a quantize step's), "float"."""
    from gguf import quants

    if t in BITS:
        blocks = code_blocks(ql, t) if ql is not None else None
        if blocks is not None:
            return blocks, "codes"
        return quants.quantize(np.ascontiguousarray(w, np.float32), ggml_type(t)), \
            "quantized (from dequantized codes)" if ql is not None else "quantized"
    return np.ascontiguousarray(w.astype(np.float16 if t == "f16" else np.float32)), \
        "float (dequantized codes)" if ql is not None else "float"


def check_uniform(model: "nn.Module") -> None:
    """llama.cpp's GPT-2 has one FFN width and one head count for all layers: refuse anything else."""
    cfg = model.config
    for i, block in enumerate(model.transformer.h):
        ffn = _out_features(block.mlp.c_fc)
        qkv = _out_features(block.attn.c_attn)
        if ffn != (cfg.n_inner or 4 * cfg.n_embd) or qkv != 3 * cfg.n_embd:
            raise UserError(f"layer {i} has FFN width {ffn} and qkv width {qkv}, the config says "
                            f"{cfg.n_inner or 4 * cfg.n_embd} and {3 * cfg.n_embd}: llama.cpp's GPT-2 needs the "
                            "same widths in every layer (prune with one width for all layers)")


def _out_features(layer) -> int:
    return int(getattr(layer, "out_features", None) or getattr(layer, "nf", None) or layer.weight.shape[-1])


def _matrix(model: "nn.Module", name: str, records: dict) -> tuple[np.ndarray, np.ndarray | None, object]:
    """(weight [out, in] fp32, bias or None, codes or None) of one projection."""
    ql = records.get(name)
    if ql is not None:
        bias = None if ql.bias is None else ql.bias.float().numpy()
        return ql.dequantize().numpy(), bias, ql
    layer = model.get_submodule(name)
    w = layer.weight.detach().float().cpu().numpy()
    if type(layer).__name__ == "Conv1D":
        w = w.T  # Conv1D stores [in, out]
    bias = None if getattr(layer, "bias", None) is None else layer.bias.detach().float().cpu().numpy()
    return w, bias, None


def tensors_of(model: "nn.Module", records: dict, t: str, table_t: str) -> list[tuple[str, np.ndarray, str, str]]:
    """[(gguf name, data, type, how)] in llama.cpp's GPT-2 names."""
    import torch

    def f32(x) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    tr = model.transformer
    head = records.get("lm_head")
    head_w = head.dequantize() if head is not None else model.lm_head.weight.detach().float().cpu()
    # Tied when the table is the head's weight (a quantized tied head's table is rebuilt from its codes,
    # and the loaded model no longer says tie_word_embeddings).
    tied = head_w.shape == tr.wte.weight.shape and bool(torch.equal(head_w, tr.wte.weight.detach().float().cpu()))
    mixed = is_mixed(model, records)
    out = []

    def add(name: str, w: np.ndarray, typ: str, ql=None) -> None:
        data, how = encode(w, typ, ql)
        out.append((name, data, typ, how))

    # The tied table: the head's codes when the quantize step quantized the (tied) head.
    add("token_embd.weight", f32(tr.wte.weight), table_t, head if tied else None)
    # The position table is small (n_ctx rows) and added to every token: f32, or f16 beside any other type.
    add("position_embd.weight", f32(tr.wpe.weight), "f32" if "f32" in (t, table_t) else "f16")
    for i, block in enumerate(tr.h):
        for src, dst in NORMS.items():
            ln = getattr(block, src)
            add(f"blk.{i}.{dst}.weight", f32(ln.weight), "f32")
            add(f"blk.{i}.{dst}.bias", f32(ln.bias), "f32")
        for src, dst in PROJECTIONS.items():
            w, bias, ql = _matrix(model, f"transformer.h.{i}.{src}", records)
            add(f"blk.{i}.{dst}.weight", w, own_type(ql, t) if mixed else t, ql)
            add(f"blk.{i}.{dst}.bias", bias if bias is not None else np.zeros(w.shape[0], np.float32), "f32")
    add("output_norm.weight", f32(tr.ln_f.weight), "f32")
    add("output_norm.bias", f32(tr.ln_f.bias), "f32")
    if not tied:  # llama.cpp reads token_embd as the head when output.weight is absent
        w, _, ql = _matrix(model, "lm_head", records)
        add("output.weight", w, table_t, ql)
    return out


def is_mixed(model: "nn.Module", records: dict) -> bool:
    """Per-module precision (quantize overrides): the block projections differ in bits, or some stay float."""
    names = [f"transformer.h.{i}.{p}" for i in range(model.config.n_layer) for p in PROJECTIONS]
    return bool(records) and len({records[n].bits if n in records else None for n in names}) > 1


def own_type(ql: "LinearCodes | None", t: str) -> str:
    """The type of one projection of a mixed model exported as q8_0 / q4_0: its codes' own block type (8-bit ->
    q8_0, 4-bit -> q4_0, carried code for code where the grid is that block), f16 for a module kept float;
    a 4-bit grid q4_0 cannot carry (not groups of 32k) is re-quantized to `t`. type f16 / f32: all float."""
    if t not in BITS:
        return t  # f16 / f32 asked for: every matrix float (dequantized)
    if ql is None:
        return "f16"
    native = {8: "q8_0", 4: "q4_0"}[ql.bits]
    if ql.in_features % BLOCK[native]:
        return "f16"  # rows that are not whole blocks (write_gguf refuses them for `t` itself)
    return native if ql.bits == 8 or carries_grid(ql.bits, ql.group_size, True, native) else t


def tokenizer_metadata(tokenizer, n_vocab: int) -> dict:
    """tokens, token types, merges, bos/eos of a byte-level BPE tokenizer (GPT-2's scheme), padded with
    unused tokens up to the model's n_vocab rows."""
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") not in ("ByteLevel", None):
        raise UserError("format gguf embeds a byte-level BPE tokenizer (GPT-2's); this model's tokenizer is "
                        f"{model.get('type', type(tokenizer).__name__)}")
    vocab = {tok: i for tok, i in tokenizer.get_vocab().items()}
    if max(vocab.values()) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    added = {a["content"] for a in spec.get("added_tokens", [])}
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = int(TokenType.CONTROL if tok in special else TokenType.USER_DEFINED if tok in added
                       else TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return {"tokens": tokens, "types": types, "merges": merges, "bos": bos, "eos": eos}


def write_gguf(model: "nn.Module", records: dict, tokenizer, path: Path, t: str, table_t: str) -> dict[str, str]:
    """Write model.gguf; returns how each matrix was written (codes / quantized / float)."""
    import gguf

    check_uniform(model)
    cfg = model.config
    n_embd, n_inner = int(cfg.n_embd), int(cfg.n_inner or 4 * cfg.n_embd)
    for typ, dims in ((t, {"n_embd": n_embd, "n_inner": n_inner}), (table_t, {"n_embd": n_embd})):
        bad = {d: w for d, w in dims.items() if w % BLOCK[typ]}
        if bad:
            raise UserError(f"{typ} needs rows that are multiples of {BLOCK[typ]}: {bad}; use type f16")
    tensors = tensors_of(model, records, t, table_t)
    tok = tokenizer_metadata(tokenizer, int(cfg.vocab_size))
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("gpt2-edge student")
    w.add_context_length(int(cfg.n_positions))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_inner)
    w.add_block_count(int(cfg.n_layer))
    w.add_head_count(int(cfg.n_head))
    w.add_head_count_kv(int(cfg.n_head))
    w.add_layer_norm_eps(float(cfg.layer_norm_epsilon))
    w.add_file_type(int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[t]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    if tok["bos"] is not None:
        w.add_bos_token_id(int(tok["bos"]))
    if tok["eos"] is not None:
        w.add_eos_token_id(int(tok["eos"]))
    w.add_add_bos_token(False)  # GPT-2 prompts start without a BOS token (as the toolkit's runners feed them)
    for name, data, typ, _ in tensors:
        w.add_tensor(name, data, raw_dtype=ggml_type(typ) if typ in BITS else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {name: how for name, data, _, how in tensors if data.ndim == 2}


def run_script(gguf_file: str) -> str:
    return f"""#!/bin/sh
# Run {gguf_file} in stock llama.cpp (llama-cli / llama-perplexity from a llama.cpp build, or
# llama-cpp-python: bench/setup_peers.sh). Greedy, no BOS, as the toolkit's own runners decode.
set -e
cd "$(dirname "$0")"
PROMPT="${{1:-Once upon a time}}"
llama-cli -m {gguf_file} -p "$PROMPT" -n 64 --temp 0 --top-k 1 -no-cnv
# perplexity on a text file (windows of the plan's data.eval.seq_len):
#   llama-perplexity -m {gguf_file} -f eval.txt -c 512
"""
