"""The real peers (llama.cpp, CTranslate2, OpenVINO) on one model: size, perplexity, latency.

They live in their own virtualenv (bench/setup_peers.sh -> .venv-peers/), so bench/run.py cannot
measure them in its own process: `peer_rows` runs this file under the venv's python, right after
run.py's own latency rounds, with the same rounds, prompt, decode steps and threads, and reads back
one JSON row per peer. Without the venv every peer row says so instead of carrying a number.

    .venv-peers/bin/python bench/peers.py --check       # can each engine be imported?
    .venv-peers/bin/python bench/peers.py --model DIR [--tokenizer DIR] [--eval-ids IDS.npy] \
        --out rows.json [--baseline] [--ours LABEL=DIR] [--rounds 3] [--new-tokens 64] [--threads 2]

Protocol, as in run.py: perplexity by evalsuite.perplexity over 256-token windows without overlap,
scored from each engine's own logits; latency batch 1, a random 128-token prompt, greedy decode,
median over round-robin rounds of (prefill ms, mean decode ms per token), one warm-up per round.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# A sibling script is named onnx.py: keep this folder off sys.path so `import onnx` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VENV_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
NOT_INSTALLED = "not installed: run bench/setup_peers.sh"
SEQ_LEN = 256  # perplexity windows, as run.py's rows
PROMPT = 128


class Peer(NamedTuple):
    """One peer row: the artifact on disk and how to run it."""
    path: Path
    ppl_runner: Callable  # () -> Runner whose forward(ids) gives logits at every position
    latency: Callable[[], tuple[float, float]] | None  # one measured run: (prefill ms, decode ms/token)
    note: str = ""


class Context(NamedTuple):
    """(NamedTuples, not dataclasses: run.py and the tests load this file without registering it.)"""
    hf_dir: Path
    work: Path
    threads: int
    new_tokens: int
    max_positions: int
    n_embd: int
    cache: dict  # the f32 GGUF, converted once for the three llama.cpp rows


def _engines():
    spec = importlib.util.spec_from_file_location("bench_peer_engines", HERE / "peer_engines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pe = _engines()


def _runner_latency(runner, ctx: Context) -> Callable[[], tuple[float, float]]:
    from evalsuite.latency import measure_latency

    def run():
        r = measure_latency(runner, prompt=PROMPT, new_tokens=ctx.new_tokens, repeats=1, warmup=1,
                            threads=ctx.threads, progress=False)
        return r.prefill_ms["p50"], r.decode_ms_per_token["p50"]
    return run


def llama_peer(kind: str, ctx: Context) -> Peer:
    if "f32" not in ctx.cache:
        ctx.cache["f32"] = pe.gguf_f32(ctx.hf_dir, ctx.work / "gguf")
    path = pe.gguf_quantized(ctx.cache["f32"], kind, ctx.threads)
    # k-quants need rows of 256: for other widths llama.cpp's quantizer picks q5_0 / q8_0 for those
    note = "q5_0 / q8_0 where rows are not a multiple of 256" if kind.endswith("_K_M") and ctx.n_embd % 256 else ""
    return gguf_row(path, ctx, note)


def gguf_row(path: Path, ctx: Context, note: str = "") -> Peer:
    """Any GGUF file in llama.cpp: all logits for perplexity, the last position's only for latency."""
    pe.llama_probe(path)
    decode = pe.LlamaCppRunner(path, ctx.threads, n_ctx=PROMPT + ctx.new_tokens, all_logits=False)
    return Peer(path, lambda: pe.LlamaCppRunner(path, ctx.threads, n_ctx=SEQ_LEN, all_logits=True),
                _runner_latency(decode, ctx), note)


def ct2_peer(quantization: str, ctx: Context) -> Peer:
    import torch

    path = pe.ct2_convert(ctx.hf_dir, quantization, ctx.work)
    runner = pe.CTranslate2Runner(path, quantization, ctx.threads, ctx.max_positions)
    # a random prompt, fixed like measure_latency's (seed 0)
    prompt = torch.randint(0, runner.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()

    def latency():
        pe.ct2_latency(runner, prompt, 4)  # warm-up, as measure_latency does
        return pe.ct2_latency(runner, prompt, ctx.new_tokens)

    return Peer(path, lambda: runner, latency, "own generate loop (no KV-cache forward in its Python API)")


def openvino_peer(bits: int, ctx: Context) -> Peer:
    path = pe.openvino_convert(ctx.hf_dir, bits, ctx.work)
    runner = pe.OpenVinoRunner(path, ctx.threads, ctx.max_positions)
    note = "NNCF defaults: embeddings and head int8" if bits == 4 else ""
    return Peer(path, lambda: runner, _runner_latency(runner, ctx), note)


PEERS: dict[str, Callable[[Context], Peer]] = {
    "peer: llama.cpp Q8_0": lambda c: llama_peer("Q8_0", c),
    "peer: llama.cpp Q4_0": lambda c: llama_peer("Q4_0", c),
    "peer: llama.cpp Q4_K_M": lambda c: llama_peer("Q4_K_M", c),
    "peer: CTranslate2 int8": lambda c: ct2_peer("int8", c),
    "peer: CTranslate2 int8_float32": lambda c: ct2_peer("int8_float32", c),
    "peer: OpenVINO int8 (NNCF)": lambda c: openvino_peer(8, c),
    "peer: OpenVINO int4 g128 (NNCF)": lambda c: openvino_peer(4, c),
}
# the engine each row needs (for --check and for the reason a row was not run)
ENGINE_MODULE = {"llama.cpp": "llama_cpp", "CTranslate2": "ctranslate2", "OpenVINO": "optimum.intel"}


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def measure(model_dir: Path, tokenizer_dir: Path, eval_ids, rounds: int, new_tokens: int, threads: int,
            work: Path, names: list[str], baseline: bool, ours: dict[str, Path] | None = None) -> list[dict]:
    """Build every named peer, score it, then time all of them in round-robin rounds."""
    import torch

    torch.set_num_threads(threads)
    config = json.loads((model_dir / "config.json").read_text())
    ctx = Context(pe.hf_dir_with_tokenizer(model_dir, tokenizer_dir, work / "hf"), work, threads, new_tokens,
                  int(config.get("n_positions", 1024)), int(config["n_embd"]), {})
    builders = {"torch fp32 eager": _torch_baseline} if baseline else {}
    builders |= {label: functools.partial(ours_row, step_dir) for label, step_dir in (ours or {}).items()}
    builders |= {name: PEERS[name] for name in names}
    return measure_rows({name: functools.partial(build, ctx) for name, build in builders.items()}, eval_ids, rounds)


def measure_rows(builders: dict[str, Callable[[], Peer]], eval_ids, rounds: int) -> list[dict]:
    """Build every row, score it, then time all of them in round-robin rounds (a row whose Peer has
    no latency is scored only). A row that fails says why instead of carrying numbers."""
    from evalsuite.perplexity import perplexity
    from evalsuite.size import bytes_on_disk

    rows, latencies = {}, {}
    for name, build in builders.items():
        row = rows[name] = {"row": name}
        try:
            peer = build()
            row["bytes"] = bytes_on_disk(peer.path, weights_only=True)
            if peer.note:
                row["note"] = peer.note
            if eval_ids is not None:
                row["ppl"] = perplexity(peer.ppl_runner(), eval_ids, seq_len=SEQ_LEN, batch_size=1, progress=False).ppl
            if peer.latency is not None:
                latencies[name] = peer.latency
        except ImportError as e:
            row["error"] = f"{NOT_INSTALLED} ({_why(e)})"
        except (pe.PeerError, RuntimeError, ValueError, OSError, TypeError) as e:
            row["error"] = _why(e)
        print(f"  peers: {name}: {row}", file=sys.stderr, flush=True)
    timings: dict[str, list] = {k: [] for k in latencies}
    for _ in range(rounds):
        for name, run in latencies.items():
            try:
                timings[name].append(run())
            except (pe.PeerError, RuntimeError, ValueError) as e:
                rows[name]["error"] = _why(e)
    for name, runs in timings.items():
        if runs and "error" not in rows[name]:
            rows[name]["prefill_ms"] = statistics.median(p for p, _ in runs)
            rows[name]["decode_ms"] = statistics.median(d for _, d in runs)
    return list(rows.values())


def ours_row(step_dir: Path, ctx: Context) -> Peer:
    """An export step dir of ours (model.onnx, model_decode.onnx beside it when written), opened as the
    plan runner opens it, so it is timed in the same process and rounds as the peers."""
    from export.ort_runner import open_runner

    runner = open_runner(step_dir / "model.onnx", threads=ctx.threads)
    return Peer(step_dir, lambda: runner, _runner_latency(runner, ctx))


def _torch_baseline(ctx: Context) -> Peer:
    from compress.models import load_model
    from evalsuite.runner import TorchRunner

    runner = TorchRunner(load_model(ctx.hf_dir))
    return Peer(ctx.hf_dir, lambda: runner, _runner_latency(runner, ctx))


def check() -> int:
    """Import every engine and print its version; non-zero when one is missing."""
    missing = 0
    for engine, module in ENGINE_MODULE.items():
        try:
            mod = importlib.import_module(module)
            print(f"{engine}: {module} {getattr(mod, '__version__', '')}")
        except ImportError as e:
            missing += 1
            print(f"{engine}: {NOT_INSTALLED} ({_why(e)})")
    try:
        print(f"llama.cpp converter: {pe.llama_convert_script()}")
    except pe.PeerError as e:
        missing += 1
        print(f"llama.cpp converter: {e}")
    return 1 if missing else 0


# -- the client side, imported by bench/run.py in the main environment -----------------------------

def rows_from_file(path: Path, suite: str, names: list[str]) -> list[dict]:
    """The rows peers.py wrote, labelled with the suite; a peer it wrote nothing for says so."""
    got = {r["row"]: r for r in json.loads(path.read_text())}
    out = []
    for name in names:
        row = got.get(name) or {"row": name, "error": "peers.py wrote no row for it"}
        out.append({"suite": suite, **row})
    return out


def peer_rows(suite: str, model_dir: Path, tokenizer_dir: Path, eval_ids, rounds: int, new_tokens: int,
              threads: int, work: Path, python: Path = VENV_PYTHON, names: list[str] | None = None) -> list[dict]:
    """Every peer's row for one model, measured by peers.py in the peers' venv (a subprocess)."""
    names = list(PEERS) if names is None else names
    if not Path(python).exists():
        return [{"suite": suite, "row": n, "error": f"{NOT_INSTALLED} ({python} not found)"} for n in names]
    work.mkdir(parents=True, exist_ok=True)
    out = work / "rows.json"
    cmd = [str(python), str(HERE / "peers.py"), "--model", str(model_dir), "--tokenizer", str(tokenizer_dir),
           "--rounds", str(rounds), "--new-tokens", str(new_tokens), "--threads", str(threads),
           "--work", str(work), "--out", str(out), "--only", *names]
    if eval_ids is not None:
        import numpy as np

        np.save(work / "eval_ids.npy", eval_ids.numpy())
        cmd += ["--eval-ids", str(work / "eval_ids.npy")]
    print(f"  {suite}: peers in {python} ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0 or not out.exists():
        return [{"suite": suite, "row": n, "error": f"bench/peers.py exited with {done.returncode}"} for n in names]
    return rows_from_file(out, suite, names)


def _thread_count(text: str) -> int:
    """--threads: 1..1024, as evalsuite.cli.thread_count (not imported: this runs in the peers' venv)."""
    n = int(text)
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"must be in 1..1024 (got {n})")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="import each engine, print versions, exit")
    p.add_argument("--model", type=Path, help="a Hugging Face GPT-2 directory")
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory, if the model directory has none")
    p.add_argument("--eval-ids", type=Path, help="token ids (.npy, 1-D) to score; no perplexity without it")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=_thread_count, default=2)
    p.add_argument("--work", type=Path, help="where the converted models go (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="write the rows here as JSON (default: print them)")
    p.add_argument("--only", nargs="*", choices=list(PEERS), default=list(PEERS), help="these peers only (none: --ours and --baseline rows alone)")
    p.add_argument("--baseline", action="store_true", help="also a torch fp32 eager row, measured alike")
    p.add_argument("--ours", action="append", default=[], metavar="LABEL=DIR",
                   help="an export step dir of ours, timed in the same rounds (repeatable)")
    args = p.parse_args(argv)
    ours = {}
    for item in args.ours:
        label, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "model.onnx").is_file():
            p.error(f"--ours {item!r}: want LABEL=DIR with DIR/model.onnx")
        ours[label] = Path(folder)
    if args.check:
        return check()
    if args.model is None or not (args.model / "config.json").exists():
        p.error(f"--model: no config.json in {args.model}")
    eval_ids = None
    if args.eval_ids:
        import numpy as np
        import torch

        eval_ids = torch.from_numpy(np.load(args.eval_ids, allow_pickle=False)).long()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        rows = measure(args.model, args.tokenizer or args.model, eval_ids, args.rounds, args.new_tokens,
                       args.threads, args.work or Path(tmp), args.only, args.baseline, ours)
    text = json.dumps(rows, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
