"""Speculative decoding with the pipeline's student as the draft of the reference teacher, measured.

    python bench/speculative.py            # 8 prompts, 5 rounds, k 1..8 and adaptive, both drafts
    python bench/speculative.py --quick    # 2 prompts, 1 round, k 2/4/6, short distillation
    python bench/speculative.py --work runs/bench --skip-variant   # reuse bench/run.py --work runs/bench's pipeline

Target: the reference teacher (../shared/data/teachers/gpt2-6x384-corpus) exported to fp32 ONNX.
Drafts: the final ONNX artifact of bench/pipeline.yaml (prune -> distill T=1 KL -> GPTQ int4 ->
export), and a variant of the same plan distilled the usual way (T=2, loss 0.5 KL + 0.5 CE) to see
which recipe accepts more. Per k: acceptance, tokens per target call, decode tok/s of the target alone
and with the draft (batch 1, prompts of 128 tokens from corpus/heldout, 64 greedy tokens, round-robin
rounds), whether the text is the target's own, and the roofline projection per device. Then GPT-2
124M shapes as target with a 4 x 768 int4 draft: projected only, at the teacher pair's acceptance
(random weights would accept nothing). Writes bench/results/<date>-speculative[-quick].md.
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import replace
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/onnx.py must not shadow onnx

import torch  # noqa: E402
import yaml  # noqa: E402

from compress.models import load_model, load_tokenizer  # noqa: E402
from compress.plan import load_plan  # noqa: E402
from compress.pipeline import run_plan  # noqa: E402
from evalsuite import cli, hardware  # noqa: E402
from evalsuite.errors import ToolkitError  # noqa: E402
from evalsuite.data import read_text, tokenize  # noqa: E402
from evalsuite.metrics import ModelFacts  # noqa: E402
from evalsuite.size import gpt2_param_count  # noqa: E402
from evalsuite.speculative_measure import (WORTH_IT, SpeculativeMeasureSettings, measure_speculative,  # noqa: E402
                                           projected_speedup, prompts_from)
from compress.measure import artifact_facts  # noqa: E402
from export.ort_runner import open_runner  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
DEVICES = ("orin-nano", "orin-nx", "agx-orin", "h100", hardware.HOST)
# The usual distillation recipe, against the pipeline's draft-minded one (T=1, KL only).
VARIANT = {"temperature": 2.0, "loss": {"kl": 0.5, "ce": 0.5}}


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant_plan(plan_path: Path, out: Path) -> Path:
    """bench/pipeline.yaml with the variant's distillation, its paths made absolute, written to out."""
    raw = yaml.safe_load(plan_path.read_text())
    raw["name"] += "-variant"
    raw["model"] = str((plan_path.parent / raw["model"]).resolve())
    for part in ("train", "eval"):
        raw["data"][part]["path"] = str((plan_path.parent / raw["data"][part]["path"]).resolve())
    distill = next(s["distill"] for s in raw["steps"] if "distill" in s)
    distill.update(VARIANT)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pipeline-variant.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def gpt2_124m_facts(n_layer: int, bytes_per_param: float) -> ModelFacts:
    """GPT-2 small's width (768, vocab 50257, 1024 positions) at `n_layer` layers, weights at
    `bytes_per_param` (fp16: 2; int4 g128 with fp16 scales: 0.5 + 2/128)."""
    params = int(gpt2_param_count(50257, 1024, n_layer, 768, 4 * 768))
    return ModelFacts(params=params, n_layer=n_layer, n_embd=768, weight_bytes=int(params * bytes_per_param),
                      gathered_bytes=int(1024 * 768 * bytes_per_param))  # the position table is only looked up


def pair_table(label: str, s: dict) -> list[str]:
    alone = s["target_alone"]["decode_tokens_per_s"]
    head = ("| draft | k | acceptance | tokens / target call | ms / target call (alone: "
            f"{s['target_alone']['decode_ms_per_token']:.1f}) | ms / draft call | target alone tok/s | with draft tok/s "
            "| measured speedup | text = target's | " + " | ".join(f"projected {d}" for d in DEVICES) + " |")
    lines = [head, "|---" * (10 + len(DEVICES)) + "|"]
    for r in s["per_k"]:
        k = f"{r['k']}{' adaptive' if r['adaptive'] else ''}"
        lines.append(f"| {label} | {k} | {r['acceptance_rate']:.0%} | {r['tokens_per_target_call']:.2f} | "
                     f"{r['target_call_ms']:.1f} | {r['draft_call_ms']:.1f} | {alone:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} | {r['speedup']:.2f}x | {'yes' if r['identical_to_target'] else 'NO'} | "
                     + " | ".join(f"{r['projected_speedup'][d]:.2f}x" for d in DEVICES) + " |")
    return lines


def verdict_lines(label: str, s: dict) -> list[str]:
    return [f"- {label}: " + "; ".join(
        f"{v['device']} {v['speedup']:.2f}x {v['kind']} at k={v['k']} ({'worth it' if v['worth_it'] else 'not worth it'})"
        for v in s["verdict"])]


def gpt2_small_table(teacher_pair: dict, context: int) -> list[str]:
    target = gpt2_124m_facts(12, 2.0)  # fp16 target
    draft = gpt2_124m_facts(4, 0.5 + 2 / 128)  # 4-layer int4 draft, tied head included
    lines = [f"GPT-2 124M shapes (12 x 768, fp16 weights, {target.read_bytes / 1e6:.0f} MB read per call) as target, "
             f"4 x 768 int4 g128 draft ({draft.read_bytes / 1e6:.0f} MB per call), at the tokens per target call "
             f"measured on the teacher pair (pipeline draft); roofline projection, not a measurement:", "",
             "| k | tokens / target call (teacher pair) | " + " | ".join(f"projected {d}" for d in DEVICES) + " |",
             "|---" * (2 + len(DEVICES)) + "|"]
    for r in teacher_pair["per_k"]:
        if r["adaptive"]:
            continue
        cells = [projected_speedup(r["tokens_per_target_call"], r["k"], target, draft, d, context) for d in DEVICES]
        lines.append(f"| {r['k']} | {r['tokens_per_target_call']:.2f} | "
                     + " | ".join(f"{c:.2f}x{' ✓' if c > WORTH_IT else ''}" for c in cells) + " |")
    return lines


def run_pipeline(plan: Path, overrides: list[str], out: Path, reuse: Path | None = None):
    """(runner, facts, ppl, summary) of a pipeline plan's final ONNX step, run by the plan runner with
    bench/run.py's overrides; `reuse` is another run of the same plan head (bench/run.py --work) whose
    finished steps are copied in, so steps with equal hashes, and their evaluation, are not redone."""
    if reuse is not None and reuse != out and reuse.is_dir():
        shutil.copytree(reuse, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    result = run_plan(load_plan(plan, overrides), out, progress=False)
    last = [m for m in result.metrics if m["backend"] == "onnxruntime"][-1]
    path = out / last["step"] / "model.onnx"
    runner = open_runner(path.parent)  # the fused decode graph beside model.onnx
    return runner, artifact_facts(path, runner), last["ppl"], {m["step"]: m["summary"] for m in result.metrics}


def main(argv=None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv=None) -> int:
    p = cli.add_debug_flag(cli.ArgumentParser(prog="python bench/speculative.py",
                                              description=__doc__.splitlines()[0]))
    p.add_argument("--quick", action="store_true", help="2 prompts, 1 round, k 2/4/6, 16k distillation tokens")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the results .md is written")
    p.add_argument("--work", type=Path, help="keep the pipeline runs here (default: a temporary dir)")
    p.add_argument("--pipeline", type=Path, default=HERE / "pipeline.yaml")
    p.add_argument("--ks", type=int, nargs="+", help="the k values to measure (default: 2 4 6 quick, 1..8 full)")
    p.add_argument("--skip-variant", action="store_true", help="only the pipeline's own draft")
    p.add_argument("--eval-tokens", type=int, help="held-out tokens the drafts' steps are scored on (default: "
                   "bench/run.py's, so a --work dir of bench/run.py is reused as it is)")
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        raise ToolkitError(f"teacher not found at {TEACHER} (the reference needs ../shared/data beside the repo)")
    started = datetime.datetime.now()
    bench_onnx, bench_run = _bench_module("onnx"), _bench_module("run")
    if args.eval_tokens is None:
        args.eval_tokens = bench_run.QUICK_EVAL_TOKENS if args.quick else bench_run.FULL_EVAL_TOKENS
    settings = (SpeculativeMeasureSettings(ks=(2, 4, 6), prompts=2, repeats=1, warmup=1) if args.quick else
                SpeculativeMeasureSettings(ks=tuple(range(1, 9)), prompts=8, repeats=5, warmup=1, adaptive=True))
    if args.ks:
        settings = replace(settings, ks=tuple(args.ks))
    heldout = tokenize(read_text(DATA / "corpus" / "heldout"), load_tokenizer(TEACHER))
    prompts = prompts_from(heldout, settings.prompts, settings.prompt)
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as tmp:
        work = args.work or Path(tmp)
        (work / "target").mkdir(parents=True, exist_ok=True)
        target = bench_onnx.ours(load_model(TEACHER), bench_onnx.ExportConfig(), {}, work / "target")
        target_facts = artifact_facts(target.path, target)
        drafts = {"pipeline (T=1, KL)": args.pipeline}
        if not args.skip_variant:
            drafts["variant (T=2, 0.5 KL + 0.5 CE)"] = variant_plan(args.pipeline, work)
        results, notes = {}, []
        for label, plan in drafts.items():
            print(f"building draft {label} ...", file=sys.stderr, flush=True)
            overrides = bench_run.pipeline_overrides(args.quick, args.eval_tokens)
            draft, facts, ppl, summary = run_pipeline(plan, overrides, work / label.split()[0], reuse=work / "pipeline")
            notes.append(f"- {label}: {facts.weight_bytes / 1e6:.1f} MB, ppl {ppl:.2f} on the held-out tokens; "
                         + "; ".join(f"{k}: {v}" for k, v in summary.items()))
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            results[label] = measure_speculative(target, draft, prompts, target_facts, facts, settings, DEVICES)
            # written after every draft, so a run stopped during the next one keeps what it measured
            write_results(bench_run, args, started, settings, target_facts, results, notes)
    return 0


def write_results(bench_run, args, started, settings, target_facts: ModelFacts, results: dict,
                  notes: list[str]) -> Path:
    first = next(iter(results.values()))
    text = "\n".join([
        f"# bench/speculative.py{' --quick' if args.quick else ''}, {started:%Y-%m-%d %H:%M}", "",
        f"Host: {hardware.host_cpu()}, {first['protocol']['threads']} threads, copy bandwidth "
        f"{hardware.measure_host_bandwidth():.1f} GB/s (measured); torch {torch.__version__}. Target: the reference "
        f"teacher as fp32 ONNX ({target_facts.weight_bytes / 1e6:.1f} MB). Batch 1, {settings.prompts} prompts of "
        f"{settings.prompt} tokens from corpus/heldout, {settings.new_tokens} greedy tokens, median of "
        f"{settings.repeats} round-robin round(s) after {settings.warmup} warm-up; decode tok/s excludes the prefill.",
        "", "Drafts:", *notes, "",
        *[line for label, s in results.items() for line in pair_table(label, s)], "",
        "Verdict (worth it: speedup > 1.1x; measured on this host, projected elsewhere):",
        *[line for label, s in results.items() for line in verdict_lines(label, s)], "",
        *gpt2_small_table(first, settings.prompt + settings.new_tokens), "",
        f"Wall time: {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min.",
    ])
    return bench_run.write_results(text, args.out, f"{started:%Y-%m-%d}-speculative{'-quick' if args.quick else ''}.md")


if __name__ == "__main__":
    sys.exit(main())
