"""Read a GGUF file back as llama.cpp's GPT-2 loader would, and run it (in torch) for validation.

`inspect(path)` checks what llama.cpp checks when it loads arch gpt2 (src/models/gpt2.cpp): the
hyper-parameters it reads, every tensor it creates with the shape it expects from them (ne order:
[columns, rows]), nothing extra, and a token list as long as the token table. `GgufReadBack` then
dequantizes every tensor with gguf.quants and runs GPT-2 on them in torch: this checks the layout
(names, orientation, the q/k/v order, the tied head, the metadata) and the codes, not llama.cpp's
kernels. `open_runner` (backend "llama.cpp") runs the file in llama.cpp itself where llama-cpp-python
is installed (bench/setup_peers.sh; `LlamaCppRunner`); elsewhere it raises BackendUnavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.errors import UserError

ARCH = "gpt2"


@dataclass(frozen=True)
class GgufModel:
    """What a GGUF file says: hyper-parameters, tokenizer metadata, tensors (ggml type name, ne)."""

    params: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    tokens: list[str]
    merges: int
    bos: int | None
    eos: int | None


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_model(path: Path) -> tuple[GgufModel, Any]:
    from gguf import GGUFReader

    if not Path(path).is_file():
        raise UserError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:200]})") from None
    arch = _field(reader, "general.architecture")
    keys = {"n_ctx": "context_length", "n_embd": "embedding_length", "n_ff": "feed_forward_length",
            "n_layer": "block_count", "n_head": "attention.head_count", "n_head_kv": "attention.head_count_kv",
            "eps": "attention.layer_norm_epsilon"}
    params = {k: _field(reader, f"{arch}.{v}") for k, v in keys.items()}
    params["arch"] = arch
    tensors = {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors}
    return GgufModel(params=params, tensors=tensors, tokens=list(_field(reader, "tokenizer.ggml.tokens", [])),
                     merges=len(_field(reader, "tokenizer.ggml.merges", []) or []),
                     bos=_field(reader, "tokenizer.ggml.bos_token_id"),
                     eos=_field(reader, "tokenizer.ggml.eos_token_id")), reader


def expected_tensors(p: dict[str, Any], n_vocab: int, tied: bool) -> dict[str, tuple[int, ...]]:
    """name -> ne (columns first) that llama.cpp's GPT-2 loader creates from the hyper-parameters."""
    e, ff = p["n_embd"], p["n_ff"]
    out = {"token_embd.weight": (e, n_vocab), "position_embd.weight": (e, p["n_ctx"]),
           "output_norm.weight": (e,), "output_norm.bias": (e,)}
    if not tied:
        out["output.weight"] = (e, n_vocab)
    for i in range(p["n_layer"]):
        b = f"blk.{i}."
        out |= {b + "attn_norm.weight": (e,), b + "attn_norm.bias": (e,), b + "attn_qkv.weight": (e, 3 * e),
                b + "attn_qkv.bias": (3 * e,), b + "attn_output.weight": (e, e), b + "attn_output.bias": (e,),
                b + "ffn_norm.weight": (e,), b + "ffn_norm.bias": (e,), b + "ffn_up.weight": (e, ff),
                b + "ffn_up.bias": (ff,), b + "ffn_down.weight": (ff, e), b + "ffn_down.bias": (e,)}
    return out


def inspect(m: GgufModel) -> list[str]:
    """What llama.cpp would refuse (or misread) in this file; empty when it loads."""
    p = m.params
    if p["arch"] != ARCH:
        return [f"general.architecture is {p['arch']!r}, not {ARCH!r}"]
    missing = [k for k, v in p.items() if v is None and k != "n_head_kv"]
    if missing:
        return [f"missing hyper-parameters: {', '.join(missing)}"]
    problems = []
    if p["n_embd"] % p["n_head"]:
        problems.append(f"embedding_length {p['n_embd']} is not a multiple of head_count {p['n_head']}")
    if p["n_head_kv"] not in (None, p["n_head"]):
        problems.append(f"head_count_kv {p['n_head_kv']} != head_count {p['n_head']} (GPT-2 has no GQA)")
    n_vocab = len(m.tokens)
    want = expected_tensors(p, n_vocab, tied="output.weight" not in m.tensors)
    for name, ne in want.items():
        if name not in m.tensors:
            problems.append(f"tensor {name} missing")
        elif m.tensors[name][1] != ne:
            problems.append(f"tensor '{name}' has wrong shape; expected {list(ne)}, got {list(m.tensors[name][1])}")
    extra = sorted(set(m.tensors) - set(want))
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra[:4])}")
    if m.merges == 0 and n_vocab > 257:
        problems.append("tokenizer.ggml.merges is empty")
    for key in ("bos", "eos"):
        tid = getattr(m, key)
        if tid is not None and not 0 <= tid < n_vocab:
            problems.append(f"{key} token id {tid} outside the {n_vocab} tokens")
    return problems


def to_torch(path: Path):
    """A GPT2LMHeadModel holding the file's dequantized tensors, after `inspect` finds nothing."""
    from gguf import quants
    from transformers import GPT2Config, GPT2LMHeadModel

    m, reader = read_model(path)
    problems = inspect(m)
    if problems:
        raise UserError(f"{path}: llama.cpp would not load it: {'; '.join(problems)}")
    p = m.params
    w = {t.name: torch.from_numpy(np.array(quants.dequantize(t.data, t.tensor_type), np.float32)).reshape(
        tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    tied = "output.weight" not in w
    config = GPT2Config(vocab_size=len(m.tokens), n_positions=p["n_ctx"], n_embd=p["n_embd"], n_layer=p["n_layer"],
                        n_head=p["n_head"], n_inner=p["n_ff"], layer_norm_epsilon=p["eps"],
                        activation_function="gelu_new", tie_word_embeddings=tied, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=m.bos, eos_token_id=m.eos)
    sd = {"transformer.wte.weight": w["token_embd.weight"], "transformer.wpe.weight": w["position_embd.weight"],
          "transformer.ln_f.weight": w["output_norm.weight"], "transformer.ln_f.bias": w["output_norm.bias"]}
    names = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(p["n_layer"]):
        for hf, g in names.items():
            weight = w[f"blk.{i}.{g}.weight"]
            sd[f"transformer.h.{i}.{hf}.weight"] = weight if hf.startswith("ln") else weight.t().contiguous()
            sd[f"transformer.h.{i}.{hf}.bias"] = w[f"blk.{i}.{g}.bias"]
    sd["lm_head.weight"] = sd["transformer.wte.weight"] if tied else w["output.weight"]
    model = GPT2LMHeadModel(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> torch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


class GgufReadBack:
    """Runner over a GGUF file read back with the gguf package (dequantized; GPT-2 forward in torch)."""

    backend = "gguf-readback"
    runtime = "gguf reader (gguf.quants dequantize) + torch GPT-2 forward, not llama.cpp"

    def __init__(self, path: str | Path, device: str = "cpu"):
        from evalsuite.runner import TorchRunner

        self._torch = TorchRunner(to_torch(Path(path)), device)
        self.device, self.vocab_size, self.max_positions = device, self._torch.vocab_size, self._torch.max_positions

    def forward(self, input_ids: torch.Tensor, past: Any | None = None):
        return self._torch.forward(input_ids, past)

    def truncate_past(self, past: Any, length: int) -> Any:
        return self._torch.truncate_past(past, length)


class LlamaCppRunner:
    """Runner over a GGUF file in llama.cpp itself (llama-cpp-python): logits of every position.

    The cache is llama.cpp's own; `past` is the token ids each row has seen. A call that continues the
    context llama.cpp holds (batch 1: generation, the latency loop) only evaluates the new tokens; any
    other (another row, a rolled-back draft) rebuilds that row's context first."""

    backend = "llama.cpp"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        from evalsuite.errors import BackendUnavailable
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendUnavailable("llama-cpp-python is not installed here (bash bench/setup_peers.sh builds "
                                     "it); the GGUF was validated by reading it back (validation.json)") from None
        if device != "cpu":
            raise BackendUnavailable(f"this llama.cpp runner runs on CPU only (asked for {device})")
        m, _ = read_model(Path(path))
        problems = inspect(m)
        if problems:
            raise UserError(f"{path}: llama.cpp would not load it: {'; '.join(problems)}")
        self.device, self.vocab_size, self.max_positions = "cpu", len(m.tokens), int(m.params["n_ctx"])
        self.runtime = "llama.cpp (llama-cpp-python)"
        threads = threads or torch.get_num_threads()
        self.llm = Llama(model_path=str(path), n_ctx=self.max_positions, n_batch=self.max_positions,
                         n_ubatch=min(512, self.max_positions), logits_all=True, verbose=False,
                         n_threads=threads, n_threads_batch=threads)

    def _run(self, context: list[int], row: list[int]) -> torch.Tensor:
        llm, n = self.llm, len(context)
        if n and (llm.n_tokens < n or list(llm.input_ids[:n]) != context):
            llm.reset()
            llm.eval(context)  # another row's (or a longer) context was cached: rebuild this one
        llm.n_tokens = n  # eval() drops the cache from position n on
        llm.eval(row)
        return torch.from_numpy(np.array(llm.scores[n:n + len(row)], np.float32))

    def forward(self, input_ids: torch.Tensor, past: list[tuple[int, ...]] | None = None):
        rows = input_ids.tolist()
        contexts = [list(p) for p in past] if past is not None else [[] for _ in rows]
        logits = [self._run(c, r) for c, r in zip(contexts, rows)]
        return torch.stack(logits), [tuple(c + r) for c, r in zip(contexts, rows)]

    def truncate_past(self, past: list[tuple[int, ...]], length: int) -> list[tuple[int, ...]]:
        return [p[:length] for p in past]


def open_runner(path: Path, device: str = "cpu"):
    """Backend "llama.cpp": the file in llama.cpp (llama-cpp-python), or BackendUnavailable."""
    return LlamaCppRunner(path, device)
