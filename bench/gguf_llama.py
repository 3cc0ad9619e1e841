"""The toolkit's GGUF (export: {format: gguf}) of the reference teacher in stock llama.cpp, against the
toolkit's own torch model: perplexity, greedy tokens, tokenization, decode speed.

    .venv-peers/bin/python bench/gguf_llama.py          # llama-cpp-python from bench/setup_peers.sh
    .venv-peers/bin/python bench/gguf_llama.py --tokens 4096 --types f16 q8_0 q4_0

Perplexity on the first --tokens of corpus/heldout (its first three files), windows of 256; greedy: 48
new tokens after one prompt; latency: evalsuite.latency.measure_latency (prompt 128, 32 new tokens,
batch 1) of export.gguf_runner.LlamaCppRunner (logits at every position, so prefill is slower than
llama.cpp's own generation loop). Prints one line per type; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DATA / "teachers" / "gpt2-6x384-corpus")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"], choices=["f32", "f16", "q8_0", "q4_0"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compress.models import load_model, load_tokenizer
    from evalsuite.data import tokenize
    from evalsuite.latency import measure_latency
    from evalsuite.perplexity import perplexity
    from evalsuite.runner import TorchRunner
    from export.generate import GenerationConfig, generate
    from export.gguf import write_gguf
    from export.gguf_runner import LlamaCppRunner

    model, tok = load_model(args.model), load_tokenizer(args.model)
    text = "".join(f.read_text() for f in sorted((DATA / "corpus" / "heldout").glob("*"))[:3])
    ids = tokenize(text[:50 * args.tokens], tok)[:args.tokens]
    ref = perplexity(TorchRunner(model), ids, 256, progress=False).ppl
    print(f"torch fp32: ppl {ref:.3f} on {ids.numel()} heldout tokens (windows 256)", flush=True)
    prompt = tok.encode("The history of the city")
    cfg = GenerationConfig(max_new_tokens=48, eos_token_id=tok.eos_token_id)
    want = generate(TorchRunner(model), prompt, cfg)
    sample = "The quick brown fox jumps over the lazy dog. It's 3.14 -- isn't it?\n  indented"
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.types:
            path = Path(tmp) / f"{t}.gguf"
            write_gguf(model, {}, tok, path, t, "q8_0" if t == "q4_0" else t)
            runner = LlamaCppRunner(path, threads=args.threads)
            same_tokens = runner.llm.tokenize(sample.encode(), add_bos=False, special=False) == tok.encode(sample)
            got = generate(runner, prompt, cfg)
            ppl = perplexity(runner, ids, 256, progress=False).ppl
            lat = measure_latency(runner, prompt=128, new_tokens=32, repeats=3, warmup=1, progress=False)
            print(f"{t}: {path.stat().st_size / 1e6:.1f} MB, llama.cpp ppl {ppl:.3f} ({100 * (ppl / ref - 1):+.2f}% "
                  f"vs torch fp32), greedy == torch: {got == want}, tokenizer == transformers: {same_tokens}, "
                  f"decode {lat.decode_ms_per_token_p50:.2f} ms/token, prefill(128) {lat.prefill_ms_p50:.1f} ms",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
