"""bench/pipeline.yaml's pruned, distilled student in stock llama.cpp, beside llama.cpp's own Q4_0 of the
teacher and our ONNX int4 export, all measured in one run of one process.

    python -m compress.run bench/pipeline.yaml --out RUN       # the plan: its GGUF f16 / q4_0 and ONNX exports
    .venv-peers/bin/python bench/gguf_pipeline.py RUN          # llama-cpp-python from bench/setup_peers.sh
    .venv-peers/bin/python bench/gguf_pipeline.py RUN --tokens 0 --rounds 7 --new-tokens 64

Rows (ppl: the same first --tokens of corpus/heldout for every row, 256-token windows, batch 1, scored
from each engine's own logits; MB: weight bytes on disk; latency: batch 1, a random 128-token prompt,
greedy decode, median of round-robin rounds that visit every timed row in turn, as bench/peers.py):
  torch fp32: distilled student          the distill step's model, the torch model the GGUFs are checked against
  torch: GPTQ int4 student               the quantize step's model (ppl only)
  torch fp32: teacher                    the plan's base model (ppl only)
  ours: student f16 GGUF                 the plan's `export: {format: gguf, type: f16}` in llama.cpp
  ours: student Q8_0 GGUF                export.gguf.write_gguf(q8_0) of the distilled model, written here
  ours: student Q4_0 GGUF (GPTQ codes)   the plan's `export: {format: gguf, type: q4_0}`
  ours: student ONNX int4                the plan's `export: {format: onnx}` (its fused decode graph, ORT)
  peer: llama.cpp Q4_0 of the teacher    llama.cpp's convert_hf_to_gguf.py (f32), then its quantizer
                                         (llama_model_quantize, Q4_0): bench/peers.py's llama.cpp row
Checks (exit 1 when one fails): greedy tokens of the f16 GGUF in llama.cpp == the torch student's
(export.gguf_runner.LlamaCppRunner, PROMPTS x 48 tokens); the Q8_0 GGUF's ppl within 0.5% of the
torch student's. Writes bench/results/<date>-gguf-pipeline.md (--out) and prints it.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# A sibling script is named onnx.py: keep this folder off sys.path so `import onnx` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
PROMPTS = ("The history of the city", "In 1998, the company announced", "She opened the door and")
GREEDY_TOKENS = 48
Q8_LIMIT = 0.005  # the Q8_0 GGUF's ppl may differ from the torch student's by this fraction
STUDENT, GPTQ, TEACHER = ("torch fp32: distilled student", "torch: GPTQ int4 student (ppl only)",
                          "torch fp32: teacher (ppl only)")
Q8_ROW = "ours: student Q8_0 GGUF"
# the torch model each row was made from, for the "ppl / own torch" column
MADE_FROM = {"ours: student f16 GGUF": STUDENT, Q8_ROW: STUDENT, "ours: student Q4_0 GGUF (GPTQ codes)": GPTQ,
             "ours: student ONNX int4 (ORT)": GPTQ, "peer: llama.cpp Q4_0 of the teacher": TEACHER}


def sibling(name: str):
    """bench/<name>.py as a module (bench/ is no package), as bench/run.py loads its siblings."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PlanRun:
    """The step directories of a bench/pipeline.yaml run that this bench reads (from manifest.json and
    each step's step.json)."""

    def __init__(self, run: Path):
        from compress.errors import UserError

        manifest = run / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"{run}: no manifest.json; run `python -m compress.run bench/pipeline.yaml --out {run}`")
        steps = [json.loads((run / s["name"] / "step.json").read_text()) | {"dir": run / s["name"]}
                 for s in json.loads(manifest.read_text())["steps"] if (run / s["name"] / "step.json").is_file()]

        def last(what: str, keep: Callable[[dict], bool]) -> dict:
            found = [s for s in steps if keep(s)]
            if not found:
                raise UserError(f"{run}: no finished {what} step (bench/pipeline.yaml has one)")
            return found[-1]

        def model(kind: str) -> Path:
            step = last(kind, lambda s: s["step_kind"] == kind and s.get("model_dir"))
            return step["dir"] / step["model_dir"]

        self.teacher, self.student, self.gptq = model("base"), model("distill"), model("quantize")
        gguf = {s["config"]["type"]: s["dir"] / s["artifact"] for s in steps if s.get("backend") == "llama.cpp"}
        for t in ("f16", "q4_0"):
            if t not in gguf:
                raise UserError(f"{run}: no `export: {{format: gguf, type: {t}}}` step (bench/pipeline.yaml has one)")
        self.gguf_f16, self.gguf_q4_0 = gguf["f16"], gguf["q4_0"]
        self.onnx = last("ONNX export", lambda s: s.get("backend") == "onnxruntime")["dir"]
        self.summaries = {s["name"]: s["summary"] for s in steps}


def greedy(student, gptq, tok, run: PlanRun, q8: Path, threads: int) -> list[dict]:
    """Greedy tokens per prompt of each GGUF in llama.cpp vs the torch model it was made from, and vs
    that model at the file's precision (export.gguf_runner.GgufReadBack: the file's dequantized
    weights in torch). Where llama.cpp leaves the torch model's tokens, `gap` is the torch model's
    top-1 minus top-2 logit there: a near tie that the file's rounding may resolve the other way."""
    from evalsuite.runner import TorchRunner
    from export.generate import GenerationConfig, generate
    from export.gguf_runner import GgufReadBack, LlamaCppRunner

    cfg = GenerationConfig(max_new_tokens=GREEDY_TOKENS, eos_token_id=tok.eos_token_id, stop_at_eos=False)
    pairs = {"f16 GGUF vs torch fp32 student": (TorchRunner(student), run.gguf_f16),
             "Q8_0 GGUF vs torch fp32 student": (TorchRunner(student), q8),
             "Q4_0 GGUF vs torch GPTQ student": (TorchRunner(gptq), run.gguf_q4_0)}
    out = []
    for name, (torch_runner, path) in pairs.items():
        llama, same_precision = LlamaCppRunner(path, threads=threads), GgufReadBack(path)
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            want, got = generate(torch_runner, ids, cfg), generate(llama, ids, cfg)
            first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
            gap = None
            if first is not None:
                logits, _ = torch_runner.forward(torch.tensor([ids + want[:first]]))
                top = logits[0, -1].topk(2).values
                gap = float(top[0] - top[1])
            out.append({"pair": name, "prompt": prompt, "equal": first is None, "first": first, "gap": gap,
                        "n": len(want), "readback_equal": generate(same_precision, ids, cfg) == got})
        del llama, same_precision
    return out


def main(argv: list[str] | None = None) -> int:
    from evalsuite import cli

    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv: list[str] | None = None) -> int:
    from evalsuite import cli

    p = cli.add_debug_flag(cli.ArgumentParser(prog="bench/gguf_pipeline.py", description=__doc__.split("\n\n")[0]))
    p.add_argument("run", type=Path, help="run directory of bench/pipeline.yaml (python -m compress.run --out)")
    p.add_argument("--tokens", type=int, default=16_384, help="held-out tokens every row is scored on (0: all)")
    p.add_argument("--heldout", type=Path, default=DATA / "corpus" / "heldout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="where the Q8_0 and llama.cpp's teacher GGUFs go "
                                                           "(default: RUN/gguf-bench)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where <date>-gguf-pipeline.md is written")
    p.add_argument("--note", default="", help="a line for the results file (e.g. that the machine was loaded)")
    args = p.parse_args(argv)
    from compress.models import load_model, load_tokenizer
    from evalsuite import hardware
    from evalsuite.data import read_text, tokenize
    from evalsuite.errors import ToolkitError
    from evalsuite.machine_load import OtherLoad
    from evalsuite.runner import TorchRunner
    from export.gguf import write_gguf
    from export.ort_runner import open_runner as open_onnx

    if args.tokens < 0:
        raise ToolkitError(f"--tokens {args.tokens}: must be >= 0 (0: all held-out tokens)")
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now()
    run = PlanRun(args.run)
    peers = sibling("peers")
    pe = peers.pe
    work = args.work or args.run / "gguf-bench"
    teacher_dir = run.teacher
    student, gptq, tok = load_model(run.student), load_model(run.gptq), load_tokenizer(run.student)
    q8 = work / "student-q8_0.gguf"
    work.mkdir(parents=True, exist_ok=True)
    write_gguf(student, {}, tok, q8, "q8_0", "q8_0")
    eval_ids = tokenize(read_text(args.heldout), tok)
    eval_ids = eval_ids[:args.tokens] if args.tokens else eval_ids

    config = json.loads((teacher_dir / "config.json").read_text())
    ctx = peers.Context(pe.hf_dir_with_tokenizer(teacher_dir, teacher_dir, work / "hf"), work, args.threads,
                        args.new_tokens, int(config["n_positions"]), int(config["n_embd"]), {})

    def torch_row(model, path: Path, timed: bool):
        runner = TorchRunner(model)
        return peers.Peer(path, lambda: runner, peers._runner_latency(runner, ctx) if timed else None)

    def onnx_row():
        runner = open_onnx(run.onnx, "cpu", args.threads)
        return peers.Peer(run.onnx, lambda: runner, peers._runner_latency(runner, ctx),
                          f"{type(runner).__name__} ({run.onnx.name})")

    builders = {
        STUDENT: lambda: torch_row(student, run.student, timed=True),
        GPTQ: lambda: torch_row(gptq, run.gptq, timed=False),
        TEACHER: lambda: torch_row(load_model(teacher_dir), teacher_dir, timed=False),
        "ours: student f16 GGUF": lambda: peers.gguf_row(run.gguf_f16, ctx, "the plan's export step"),
        Q8_ROW: lambda: peers.gguf_row(q8, ctx, "export.gguf.write_gguf(q8_0) of the student"),
        "ours: student Q4_0 GGUF (GPTQ codes)": lambda: peers.gguf_row(run.gguf_q4_0, ctx, "the plan's export step"),
        "ours: student ONNX int4 (ORT)": onnx_row,
        "peer: llama.cpp Q4_0 of the teacher": lambda: peers.llama_peer("Q4_0", ctx)._replace(
            note="convert_hf_to_gguf.py f32 + llama_model_quantize Q4_0"),
    }
    with OtherLoad() as load:
        rows = {r["row"]: r for r in peers.measure_rows(builders, eval_ids, args.rounds)}
    checks = greedy(student, gptq, tok, run, q8, args.threads)
    text, passed = report(rows, checks, run, args, started, load, hardware.host_cpu())
    sibling("run").write_results(text, args.out, f"{started:%Y-%m-%d}-gguf-pipeline.md")
    return 0 if passed else 1


def report(rows: dict, checks: list[dict], run: PlanRun, args, started, load, cpu: str) -> tuple[str, bool]:
    """The results page and whether both checks passed."""
    base = rows[STUDENT]

    def vs_own(name: str, r: dict) -> str:
        own = rows.get(MADE_FROM.get(name, ""), {})
        return f"{r['ppl'] / own['ppl'] - 1:+.2%}" if "ppl" in own else "–"

    lines = ["| row | MB | ppl | ppl / torch student | ppl vs own torch | prefill-128 ms | decode ms/token | "
             "decode tok/s | note |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | – | – | – | – | – | – | – | {r['error'].replace('|', '/')} |")
            continue
        timed = "decode_ms" in r
        lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['ppl']:.3f} | {r['ppl'] / base['ppl']:.4f} | "
                     f"{vs_own(name, r)} | "
                     + (f"{r['prefill_ms']:.1f} | {r['decode_ms']:.2f} | {1e3 / r['decode_ms']:.1f} | " if timed
                        else "– | – | – | ") + f"{r.get('note', '')} |")
    f16 = [c for c in checks if c["pair"].startswith("f16")]
    f16_equal = all(c["readback_equal"] for c in f16)
    f16_vs_fp32 = sum(c["equal"] for c in f16)
    q8 = rows[Q8_ROW]
    q8_rel = q8["ppl"] / base["ppl"] - 1 if "ppl" in q8 and "ppl" in base else float("nan")
    q8_ok = abs(q8_rel) <= Q8_LIMIT
    greedy_lines = [f"- {c['pair']}, {c['prompt']!r}: " + ("equal" if c["equal"] else
                    f"DIFFERENT from token {c['first'] + 1} of {c['n']} on (torch top-2 logit gap there {c['gap']:.2g})")
                    + f"; == torch at the file's precision (read-back): {c['readback_equal']}" for c in checks]
    text = "\n".join([
        f"# bench/gguf_pipeline.py {args.run}, {started:%Y-%m-%d %H:%M}", "",
        f"Host: {cpu}, {args.threads} threads. Perplexity on the first {args.tokens or 'all'} tokens of "
        f"{args.heldout.name} (256-token windows, batch 1), the same ids for every row. Latency: batch 1, "
        f"prompt 128, {args.new_tokens} greedy decode steps, median of {args.rounds} round-robin rounds over "
        f"the timed rows, all in this process. Other processes used {load.cores or 0:.2f} cores on average "
        f"during the run (load average {load.loadavg_before or 0:.1f} -> {load.loadavg_after or 0:.1f})."
        + (f" {args.note}" if args.note else ""), "",
        "\n".join(lines), "",
        f"Checks: greedy f16 GGUF (llama.cpp) == torch student at the file's precision (f16 weights) on "
        f"{len(PROMPTS)} prompts x {GREEDY_TOKENS} tokens: {'PASS' if f16_equal else 'FAIL'} (== the fp32 student "
        f"on {f16_vs_fp32} of {len(f16)}); Q8_0 GGUF ppl vs torch student {q8_rel:+.3%} "
        f"(limit {Q8_LIMIT:.1%}): {'PASS' if q8_ok else 'FAIL'}.", "",
        *greedy_lines, "",
        "Plan steps: " + "; ".join(f"{k}: {v}" for k, v in run.summaries.items()), "",
        f"Wall time: {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min.",
    ])
    return text, f16_equal and q8_ok


if __name__ == "__main__":
    sys.exit(main())
