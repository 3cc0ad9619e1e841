"""The runtimes a user would pick instead of ours, converted the way their docs show and wrapped as
evalsuite Runners, so that `evalsuite.perplexity.perplexity` scores each engine's own logits.

    llama.cpp (llama-cpp-python)  convert_hf_to_gguf.py (f32), then llama_model_quantize: Q8_0, Q4_0, Q4_K_M
    CTranslate2                   TransformersConverter with quantization int8 / int8_float32
    OpenVINO (optimum-intel)      OVModelForCausalLM export with NNCF weight compression: int8, int4 g128

Runs only in the peers' virtualenv (bench/setup_peers.sh); every engine import is inside a function,
so this module loads anywhere. Decode latency: llama.cpp and OpenVINO have a KV-cache forward in
Python and go through evalsuite.latency like our rows; CTranslate2's Python API has none, so its own
generation loop is timed step by step (`ct2_latency`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# llama.cpp's file types (llama.h, enum llama_ftype), the three a user picks for a small model
LLAMA_FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}


class PeerError(RuntimeError):
    """A peer could not be converted or run; the message says why and becomes the row's note."""


def hf_dir_with_tokenizer(model_dir: Path, tokenizer_dir: Path, out: Path) -> Path:
    """The converters read the tokenizer from the model directory: give them one that has it (model
    files linked, the tokenizer copied in when the model directory has none)."""
    if (model_dir / "vocab.json").exists() or (model_dir / "tokenizer.json").exists():
        return model_dir
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


# -- llama.cpp ------------------------------------------------------------------------------------

def llama_convert_script() -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist, unpacked by bench/setup_peers.sh."""
    script = Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.exists():
        raise PeerError(f"{script} missing: run bench/setup_peers.sh (it unpacks the script from the sdist)")
    return script


def with_n_ctx(hf_dir: Path, out: Path) -> Path:
    """llama.cpp's GPT-2 converter reads `n_ctx`, which configs saved by transformers >= 4.4x no longer
    carry (only `n_positions`): a copy of the directory whose config.json has it, files linked."""
    config = json.loads((hf_dir / "config.json").read_text())
    if "n_ctx" in config:
        return hf_dir
    out.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if f.is_file() and f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    (out / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}, indent=2))
    return out


def gguf_f32(hf_dir: Path, out: Path) -> Path:
    """The HF checkpoint as one f32 GGUF file, written by llama.cpp's own converter."""
    path = out / "model-f32.gguf"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        hf_dir = with_n_ctx(hf_dir, out / "hf")
        done = subprocess.run([sys.executable, str(llama_convert_script()), str(hf_dir), "--outfile", str(path),
                               "--outtype", "f32"], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PeerError(f"convert_hf_to_gguf.py failed: {tail[0]}")
    return path


def gguf_quantized(f32: Path, kind: str, threads: int) -> Path:
    """llama.cpp's quantizer (what the llama-quantize tool calls) on the f32 GGUF."""
    import llama_cpp

    path = f32.with_name(f"model-{kind}.gguf")
    if path.exists():  # made by an earlier call on the same work dir (bench/side_by_side.py: a process per round)
        return path
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[kind]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(f32).encode(), str(path).encode(), params) != 0:
        raise PeerError(f"llama_model_quantize to {kind} failed")
    return path


PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=1, verbose=False)
llm.eval(list(range(32)))  # a prompt: the batched matmul kernels
llm.eval([32])  # a decode step: the vector kernels
"""


def llama_probe(path: Path) -> None:
    """Run a short prompt and a decode step of the GGUF in a child process first: a llama.cpp built for another CPU dies
    with SIGILL, which would take the whole bench process (and every other peer's row) with it."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True)
    if done.returncode < 0:
        raise PeerError(f"llama.cpp died ({signal.Signals(-done.returncode).name}) on a 33-token probe: its "
                        "build does not run on this CPU; rebuild with a portable CMAKE_ARGS (bench/setup_peers.sh)")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerError(f"llama.cpp probe failed: {tail[0]}")


class LlamaCppRunner:
    """A GGUF model in llama.cpp. Batch rows run one after another (one sequence per context); the KV
    cache is the context's own, so `past` is just the number of tokens it holds."""

    backend, device = "llama.cpp", "cpu"

    def __init__(self, path: Path, threads: int, n_ctx: int, all_logits: bool):
        from llama_cpp import Llama

        # all_logits: logits at every position (perplexity); off for latency, where llama.cpp computes
        # the head for the last position only, as its generation loop does
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                         n_threads_batch=threads, logits_all=all_logits, verbose=False)
        self.all_logits = all_logits
        self.vocab_size, self.max_positions = self.llm.n_vocab(), n_ctx
        self.path = path

    def forward(self, input_ids: torch.Tensor, past: int | None = None) -> tuple[torch.Tensor, int]:
        if past is not None and input_ids.size(0) != 1:
            raise PeerError("llama.cpp runner: a cache holds one sequence")
        rows = []
        for row in input_ids.tolist():
            if past is None:
                self.llm.reset()  # the next eval overwrites the cache from position 0
            self.llm.eval(row)
            end = self.llm.n_tokens
            first = end - len(row) if self.all_logits else end - 1
            rows.append(torch.from_numpy(np.array(self.llm.scores[first:end], dtype=np.float32)))
        return torch.stack(rows), self.llm.n_tokens  # (B, T or 1, V)


# -- CTranslate2 ----------------------------------------------------------------------------------

def ct2_convert(hf_dir: Path, quantization: str, out: Path) -> Path:
    from ctranslate2.converters import TransformersConverter

    path = out / f"ct2-{quantization}"
    if not (path / "model.bin").exists():
        TransformersConverter(str(hf_dir)).convert(str(path), quantization=quantization, force=True)
    return path


class CTranslate2Runner:
    """A CTranslate2 Generator. Its Python API has no cache in or out: forward() takes whole sequences
    (perplexity); decode latency goes through its own loop, `ct2_latency`."""

    backend, device = "ctranslate2", "cpu"

    def __init__(self, path: Path, compute_type: str, threads: int, max_positions: int):
        import ctranslate2

        self.generator = ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type,
                                               intra_threads=threads, inter_threads=1)
        self.vocabulary = json.loads((path / "vocabulary.json").read_text())  # id -> token string
        self.vocab_size = len(self.vocabulary)
        self.max_positions, self.path = max_positions, path

    def forward(self, input_ids: torch.Tensor, past=None) -> tuple[torch.Tensor, None]:
        if past is not None:
            raise PeerError("CTranslate2's Python API has no KV-cache forward")
        logits = self.generator.forward_batch(input_ids.tolist())  # StorageView (B, T, V) on CPU
        return torch.from_numpy(np.array(logits, dtype=np.float32)), None


def ct2_latency(runner: CTranslate2Runner, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of CTranslate2's own greedy loop: the first step callback comes
    after the prompt's forward, each later one after one decode step."""
    stamps = []

    def step(_result):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    tokens = [runner.vocabulary[i] for i in prompt]  # its generate API takes token strings only
    runner.generator.generate_batch([tokens], max_length=new_tokens + 1, min_length=new_tokens + 1,
                                     sampling_topk=1, include_prompt_in_result=False, callback=step)
    if len(stamps) != new_tokens + 1:
        raise PeerError(f"CTranslate2 made {len(stamps)} steps, expected {new_tokens + 1}")
    return (stamps[0] - t0) * 1e3, (stamps[-1] - stamps[0]) * 1e3 / new_tokens


# -- OpenVINO (optimum-intel) ---------------------------------------------------------------------

def openvino_convert(hf_dir: Path, bits: int, out: Path) -> Path:
    """optimum-intel's export with NNCF weight compression, as its docs show (defaults otherwise)."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    path = out / f"ov-int{bits}"
    if not (path / "openvino_model.xml").exists():
        config = OVWeightQuantizationConfig(bits=bits, group_size=128) if bits == 4 else OVWeightQuantizationConfig(
            bits=8)
        model = OVModelForCausalLM.from_pretrained(hf_dir, export=True, quantization_config=config, compile=False)
        model.save_pretrained(path)
    return path


class OpenVinoRunner:
    """optimum-intel's OVModelForCausalLM (stateful: the KV cache lives in the infer request), called
    the way transformers' generate calls it. `past` is (optimum's cache token, cached length)."""

    backend, device = "openvino", "cpu"

    def __init__(self, path: Path, threads: int, max_positions: int):
        from optimum.intel import OVModelForCausalLM

        self.model = OVModelForCausalLM.from_pretrained(
            path, ov_config={"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""})
        self.vocab_size, self.max_positions, self.path = int(self.model.config.vocab_size), max_positions, path

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, past=None) -> tuple[torch.Tensor, tuple]:
        cache, length = past if past is not None else (None, 0)
        b, t = input_ids.shape
        out = self.model(input_ids=input_ids, attention_mask=torch.ones(b, length + t, dtype=torch.long),
                         position_ids=torch.arange(length, length + t).expand(b, t), past_key_values=cache)
        return out.logits.float(), (out.past_key_values, length + t)
