"""Our int4 export and the peers in one process and the same rounds: decode and prefill ratios.

    bash bench/setup_peers.sh                                  # once: .venv-peers (llama.cpp, CTranslate2, OpenVINO)
    PYTHONPATH=. python bench/side_by_side.py                  # 3 rounds, prompt 128, 64 new tokens, 2 threads
    PYTHONPATH=. python bench/side_by_side.py --rounds 2 --new-tokens 32 --skip-teacher

bench/run.py times our rows in its own process, round-robin with the torch rows, and the peers
afterwards in one process of theirs, where every engine's thread pool lives beside the others'
(llama.cpp's decode measured 1.8x slower there than alone). Here every engine runs in a process of
its own, one process per engine and round (bench/peers.py with one row), the rounds round-robin over
the engines: torch fp32 eager, our export (ONNX Runtime MatMulNBits int4, block 128, accuracy level
4, opened with `open_runner`: the fused decode graph; made in this environment), llama.cpp (Q8_0,
Q4_0, Q4_K_M), CTranslate2 (int8) and OpenVINO (int8, int4 g128), each with the bench's threads and
its own defaults otherwise, on the reference teacher and on GPT-2 124M shapes with random weights.
Writes results/<date>-side-by-side.md naming the CPU, with our decode as a share of the host's
memory-bandwidth roofline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # a sibling is named onnx.py
sys.path.insert(0, str(HERE.parent))

import importlib.util  # noqa: E402

import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)

TORCH = "torch fp32 eager"
OURS = "ours: ORT int4 g{group} (MatMulNBits, fused decode graph)"
PEER_ROWS = ["peer: llama.cpp Q8_0", "peer: llama.cpp Q4_0", "peer: llama.cpp Q4_K_M", "peer: CTranslate2 int8",
             "peer: OpenVINO int8 (NNCF)", "peer: OpenVINO int4 g128 (NNCF)"]


def suite(label: str, model, model_dir: Path, tokenizer_dir: Path, work: Path, args, eval_ids=None) -> list[dict]:
    """Export ours (one per group size), then time every engine in a process of its own, one process per
    engine and round, the rounds round-robin over the engines; rows with tok/s, our roofline share and,
    with `eval_ids`, our perplexity (the peers' is in bench/run.py's results)."""
    import statistics

    from compress.quantization import QuantizeConfig
    from evalsuite import hardware
    from evalsuite.metrics import gpt2_facts, projections
    from evalsuite.size import bytes_on_disk
    from export.ort_session import gathered_bytes

    ours = {}
    for group in args.group_sizes:
        ours[OURS.format(group=group)] = ours_dir = work / f"ours-g{group}"
        ours_dir.mkdir(parents=True)
        bench_run.bench_onnx.ours(model, bench_run.bench_onnx.ExportConfig(), {}, ours_dir, False,
                                  QuantizeConfig(method="ort-int4", group_size=group))
    out = work / "rows.json"
    base = [str(args.peers_python), str(HERE / "peers.py"), "--model", str(model_dir), "--tokenizer", str(tokenizer_dir),
            "--rounds", "1", "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
            "--work", str(work / "peers"), "--out", str(out)]
    engines = {TORCH: ["--baseline", "--only"]}
    engines |= {name: ["--ours", f"{name}={folder}", "--only"] for name, folder in ours.items()}
    engines |= {name: ["--only", name] for name in PEER_ROWS}
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, flags in engines.items():
            print(f"{label}: round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            subprocess.run(base + flags, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            runs[name].append(json.loads(out.read_text())[0])
    config = model.config.to_dict()
    rows = []
    for name, got in runs.items():
        row = {"suite": label, "row": name, **{k: v for k, v in got[0].items() if k in ("bytes", "note", "error")}}
        timed = [g for g in got if "decode_ms" in g]
        if timed and "error" not in row:
            row["prefill_ms"] = statistics.median(g["prefill_ms"] for g in timed)
            row["decode_ms"] = statistics.median(g["decode_ms"] for g in timed)
        if name in ours:  # the decode graph gathers one row of the embedding: not read per token
            row["bytes"] = bytes_on_disk(ours[name], weights_only=True)
            facts = replace(gpt2_facts(config, row["bytes"]), gathered_bytes=gathered_bytes(ours[name] / "model_decode.onnx"))
            row["roofline_tok_s"] = projections(facts, (hardware.HOST,), context=128 + args.new_tokens)[hardware.HOST]
            if eval_ids is not None:
                from evalsuite.perplexity import perplexity
                from export.ort_runner import open_runner

                row["ppl"] = perplexity(open_runner(ours[name] / "model.onnx"), eval_ids, seq_len=256, batch_size=8,
                                        progress=False).ppl
        rows.append(row)
    return rows


def table(rows: list[dict], groups: list[int]) -> str:
    first = OURS.format(group=groups[0])
    lines = [f"| model | row | MB | ppl (ours) | prefill-128 ms | decode ms/token | decode tok/s | {first.split(' (')[0]}'s "
             "decode x row's | its prefill x row's | share of host roofline |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(r["suite"] for r in rows):
        group = [r for r in rows if r["suite"] == label]
        ours = next((r for r in group if r["row"] == first and "decode_ms" in r), None)
        for r in group:
            ppl = f"{r['ppl']:.2f}" if "ppl" in r else ""
            if "decode_ms" not in r:
                lines.append(f"| {label} | {r['row']} | | {ppl} | | {r.get('error', 'not timed')} | | | | |")
                continue
            vs = (f"{r['decode_ms'] / ours['decode_ms']:.2f} | {r['prefill_ms'] / ours['prefill_ms']:.2f}"
                  if ours else "– | –")
            share = f"{1e3 / r['decode_ms'] / r['roofline_tok_s']:.0%} of {r['roofline_tok_s']:.0f}" \
                if "roofline_tok_s" in r else ""
            lines.append(f"| {label} | {r['row']} | {r.get('bytes', 0) / 1e6:.1f} | {ppl} | {r['prefill_ms']:.1f} | "
                         f"{r['decode_ms']:.2f} | {1e3 / r['decode_ms']:.1f} | {vs} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-teacher", action="store_true", help="GPT-2 124M shapes only")
    p.add_argument("--group-sizes", type=int, nargs="+", default=[128], help="an int4 export of ours per group size")
    p.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens our teacher rows are scored on")
    p.add_argument("--peers-python", type=Path, default=bench_run.bench_peers.VENV_PYTHON)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if not args.peers_python.exists():
        print(f"side_by_side: {args.peers_python} not found: run bench/setup_peers.sh first", file=sys.stderr)
        return 2
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress.models import load_model, save_model
    from evalsuite import hardware

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    bandwidth = hardware.measure_host_bandwidth()  # the host roofline of `projections` reads it
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmp:
        tmp = Path(tmp)
        if not args.skip_teacher:
            if not bench_run.TEACHER.is_dir():
                print(f"side_by_side: no reference teacher at {bench_run.TEACHER}; use --skip-teacher", file=sys.stderr)
                return 2
            from compress.models import load_tokenizer
            from evalsuite.data import read_text, tokenize

            eval_ids = tokenize(read_text(bench_run.DATA / "corpus" / "heldout"), load_tokenizer(bench_run.TEACHER))
            rows += suite("teacher 6x384", load_model(bench_run.TEACHER).eval(), bench_run.TEACHER,
                          bench_run.TEACHER, tmp / "teacher", args, eval_ids[:args.eval_tokens])
        torch.manual_seed(0)
        small = GPT2LMHeadModel(GPT2Config()).eval()
        small_dir = save_model(small, tmp / "gpt2-small")
        rows += suite("GPT-2 124M shapes", small, small_dir, bench_run.DATA / "gpt2-tokenizer", tmp / "small", args)
    header = (f"# bench/side_by_side.py, {started:%Y-%m-%d %H:%M} UTC\n\nHost: {hardware.host_cpu()}, {args.threads} "
              f"threads, copy bandwidth {bandwidth:.1f} GB/s (measured); torch {torch.__version__}. Every engine in a "
              f"process of its own per round (bench/peers.py, one row), {args.rounds} rounds round-robin over the "
              f"engines (prompt 128, {args.new_tokens} greedy tokens, batch 1, one warm-up per process, median "
              "over rounds). 'ours' x row's' > 1: ours is faster.\n")
    text = header + "\n" + table(rows, args.group_sizes) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{started:%Y-%m-%d}-side-by-side.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
