"""The GPU path, measured on a CUDA machine. PREPARED: this script has not yet run on a GPU.

    python bench/gpu.py                      # on a CUDA machine: under 10 minutes, no network
    python bench/gpu.py --device cpu --smoke # the same code paths on CPU with tiny budgets (numbers mean nothing)

On the device it
  1. runs the torch steps of each plan (examples/quickstart.yaml, and bench/pipeline.yaml: the reference
     teacher, pruned, distilled, GPTQ int4) with `device: cuda`, then measures the torch latency of every
     step's model (batch 1, prompt 128, 64 greedy tokens) in fp16 and bf16: eager (DynamicCache), a
     static KV cache (evalsuite.torch_static), and, for each plan's base model, the static cache with the
     decode step compiled as a CUDA graph (torch.compile mode="reduce-overhead"), compile time included;
  2. measures distillation throughput (tokens/s) with compress' own loop (compress.distillation), bf16
     autocast (DistillConfig.amp) against amp off, base model as teacher and the pruned model as student;
  3. checks the ONNX fp16 graph meant for TensorRT (export format tensorrt, precision fp16) with
     export.trt_check, beside the ORT fp16 graph (whose contrib ops TensorRT cannot parse, by design);
  4. writes results/<date>-gpu.md naming the device (name, compute capability, driver, CUDA).
Without a CUDA device it prints one line and exits 1, writing nothing. The ONNX Runtime / TensorRT
export steps of the plans are left out: they build on CPU (bench/run.py) or on the target (TensorRT).
bench/pipeline.yaml needs ../shared/data beside the checkout; without it that plan is skipped and the
results say so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/onnx.py shadows onnx; the checkout's packages come first, so a GPU machine can run this from a
# plain checkout (`pip install -e .` would pull the CPU pins of torch and transformers there)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)]
PLANS = (ROOT / "examples" / "quickstart.yaml", HERE / "pipeline.yaml")
# Smoke budgets per plan (--set overrides): the same steps, tiny models and token counts.
SMOKE_SETS = {
    "quickstart.yaml": ["model.pretrain.n_layer=2", "model.pretrain.n_embd=128", "model.pretrain.n_head=4",
                        "model.pretrain.tokenizer.vocab_size=300", "model.pretrain.tokens=4096",
                        "model.pretrain.warmup_steps=2", "steps.1.distill.tokens=2048",
                        "steps.1.distill.batch_tokens=1024", "steps.1.distill.eval_tokens=0",
                        "steps.2.quantize.calib_samples=4", "steps.2.quantize.group_size=32"],
    "pipeline.yaml": ["steps.1.distill.tokens=2048", "steps.1.distill.batch_tokens=512",
                      "steps.1.distill.seq_len=64", "steps.1.distill.eval_tokens=0", "steps.2.quantize.calib_samples=4"],
}
MIN_VERSIONS = {"torch": (2, 4), "transformers": (4, 57)}


def fail(message: str) -> int:
    print(f"bench/gpu.py: {message}", file=sys.stderr)
    return 1


def version_problem() -> str | None:
    """Why this environment cannot run the script, or None. transformers 5.x is let through (the GPU
    machine has it; the project pins 4.57) and named in the results."""
    import inspect

    import torch
    import transformers

    for name, module in (("torch", torch), ("transformers", transformers)):
        have = tuple(int(x) for x in module.__version__.split("+")[0].split(".")[:2])
        if have < MIN_VERSIONS[name]:
            return f"{name} {module.__version__} is older than {'.'.join(map(str, MIN_VERSIONS[name]))}"
    if not hasattr(transformers, "StaticCache"):
        return f"transformers {transformers.__version__} has no StaticCache"
    from transformers import GPT2LMHeadModel

    if "cache_position" not in inspect.signature(GPT2LMHeadModel.forward).parameters:
        return f"transformers {transformers.__version__}: GPT2LMHeadModel.forward takes no cache_position"
    return None


def device_facts(device: str) -> dict:
    import torch

    facts = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    import transformers

    facts["transformers"] = transformers.__version__
    if device.startswith("cuda"):
        facts["name"] = torch.cuda.get_device_name(device)
        facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        facts["cuda"] = torch.version.cuda
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            facts["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            facts["driver"] = "unknown (nvidia-smi not available)"
    else:
        facts["name"] = f"CPU ({platform.processor() or platform.machine()})"
    return facts


# -- 1. the plans' torch steps, and their latency ----------------------------------------------------

def run_torch_steps(plan_path: Path, device: str, smoke: bool, work: Path):
    """Run the plan's steps up to (not including) its exports on `device`; returns (plan, run result).
    The export entries are dropped before the plan is parsed: their step kind is a plugin (entry point)
    that a plain checkout does not register."""
    from compress.errors import PlanError
    from compress.plan import apply_overrides, parse_plan
    from compress.pipeline import run_plan
    from compress.yaml_io import read_yaml_file

    sets = [f"device={'cuda' if device.startswith('cuda') else 'cpu'}", "eval.latency=null", "eval.samples=null",
            f"data.eval.max_tokens={2048 if smoke else 16384}"]
    sets += SMOKE_SETS.get(plan_path.name, []) if smoke else []
    raw, _ = read_yaml_file(plan_path)
    raw["steps"] = [step for step in raw.get("steps") or [] if "export" not in step]
    problems = apply_overrides(raw, sets)
    if problems:
        raise PlanError(problems, source=str(plan_path))
    plan = parse_plan(raw, base_dir=plan_path.parent.resolve(), source=str(plan_path))
    return plan, run_plan(plan, work / plan.name, progress=False)


def step_models(result) -> list[tuple[str, Path, float]]:
    """(step name, torch model dir, wall seconds of the step) for every step of a run."""
    out = []
    for record in result.records:
        info = json.loads((result.run_dir / record.name / "step.json").read_text())
        if info.get("model_dir"):
            out.append((record.name, result.run_dir / record.name / info["model_dir"], record.wall_s))
    return out


def compiled_runner(model, device: str, max_len: int, dtype):
    """The static cache with its decode step compiled as a CUDA graph, from a clean dynamo cache: each
    model is a new guard on the same code, and past the cache size limit dynamo would fall back to eager."""
    import torch

    from evalsuite.torch_static import TorchStaticRunner

    torch._dynamo.reset()
    return TorchStaticRunner(model, device, max_len=max_len, dtype=dtype, compile="reduce-overhead")


def latency_rows(name: str, model_dir: Path, device: str, args, graphs: bool) -> list[dict]:
    """eager / static / static + CUDA graph latency of one model in each half dtype."""
    import torch

    from compress.models import load_model
    from evalsuite.latency import measure_latency
    from evalsuite.runner import TorchRunner
    from evalsuite.torch_static import TorchStaticRunner

    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        kinds = {"eager": lambda m: TorchRunner(m.to(dtype), device),
                 "static cache": lambda m: TorchStaticRunner(m, device, max_len=args.max_len, dtype=dtype)}
        if graphs:
            kinds["static + CUDA graph"] = lambda m: compiled_runner(m, device, args.max_len, dtype)
        for kind, build in kinds.items():
            row = {"step": name, "dtype": str(dtype).removeprefix("torch."), "runner": kind}
            try:
                runner = build(load_model(model_dir))
                t0 = time.perf_counter()
                measure_latency(runner, prompt=args.prompt, new_tokens=2, repeats=1, warmup=0, progress=False)
                row["first_run_s"] = time.perf_counter() - t0
                r = measure_latency(runner, prompt=args.prompt, new_tokens=args.new_tokens, repeats=args.repeats,
                                    warmup=1, progress=False)
                row.update(prefill_ms=r.prefill_ms["p50"], decode_ms=r.decode_ms_per_token["p50"],
                           compile_s=getattr(runner, "compile_s", 0.0), peak_mb=r.peak_mem_bytes / 1e6)
            except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
                # a kernel or dtype this model's layers lack on this device: the row says so
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            rows.append(row)
            print(f"  {name} {row['dtype']} {kind}: "
                  + (row.get("error") or f"decode {row['decode_ms']:.2f} ms/token"), file=sys.stderr, flush=True)
    return rows


# -- 2. distillation throughput ----------------------------------------------------------------------

def distill_rows(plan, steps: list[tuple[str, Path, float]], device: str, smoke: bool) -> list[dict]:
    """tokens/s of compress' distillation loop: the base as teacher, the pruned model as student."""
    import torch

    from compress.data import source_text
    from compress.distillation import DistillConfig
    from compress.distillation.loop import run_distillation
    from compress.models import load_model, load_tokenizer
    from evalsuite.data import tokenize

    base = steps[0][1]
    student_dir = next((p for n, p, _ in steps if n.endswith("prune")), base)
    ids = tokenize(source_text(plan.data.train)[: 400_000 if smoke else 4_000_000], load_tokenizer(base))
    seq_len = min(256, load_model(base).config.n_positions, ids.numel() // 8)
    rows = []
    for amp in ("bf16", "off"):
        cfg = DistillConfig(tokens=4096 if smoke else 524_288, seq_len=seq_len, batch_tokens=16 * seq_len,
                            amp=amp, eval_tokens=0, warmup_steps=2, checkpoint_every=10**6, loss={"kl": 1.0})
        teacher, student = load_model(base).to(device), load_model(student_dir).to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        _, result = run_distillation(student, teacher, ids, cfg, progress=False)
        rows.append({"teacher": steps[0][0], "student": student_dir.parent.name, "amp": amp,
                     "autocast": device.startswith("cuda") and amp != "off", "tokens": result.tokens,
                     "tokens_per_s": result.tokens_per_s})
        print(f"  distill amp {amp}: {result.tokens_per_s:,.0f} tokens/s", file=sys.stderr, flush=True)
    return rows


# -- 3. TensorRT parsability of the fp16 graph --------------------------------------------------------

def trt_rows(name: str, model_dir: Path) -> list[dict]:
    """export.trt_check findings on the TensorRT fp16 graph and, for contrast, the ORT fp16 graph."""
    from compress.models import load_model
    from export import trt_check
    from export.step import ExportConfig, build_graph
    from export.tensorrt import TensorRTExport

    log = logging.getLogger("bench.gpu")
    rows = []
    trt_fp16 = TensorRTExport(format="tensorrt", precision="fp16")
    for label, cfg, precision in (("tensorrt fp16 (plain ops)", trt_fp16, "fp16"),
                                  ("onnxruntime fp16 (fused)", ExportConfig(format="onnx", fp16=True), "fp16")):
        model = load_model(model_dir)
        graph, _ = build_graph(cfg, model, {}, log)
        findings = trt_check.check_model(graph, precision, n_positions=model.config.n_positions)
        errs = trt_check.errors(findings)
        ops = sorted({n.op_type for n in graph.graph.node})
        kinds = sorted({f"[{e.code}] {e.message}" for e in errs})  # one line per kind of error, not per node
        rows.append({"model": name, "graph": label, "ops": ops, "errors": kinds,
                     "n_errors": len(errs), "n_warnings": sum(f.severity == "warning" for f in findings)})
        print(f"  trt check {name} {label}: {len(errs)} errors", file=sys.stderr, flush=True)
    return rows


# -- 4. the results file -----------------------------------------------------------------------------

def report(facts: dict, plans: list[dict], args, wall_min: float) -> str:
    smoke = args.smoke
    head = [f"# bench/gpu.py{' --smoke' if smoke else ''}, {datetime.datetime.now():%Y-%m-%d %H:%M}", ""]
    if smoke:
        head += [f"SMOKE RUN on {facts['device']}: tiny budgets to exercise the code paths; no number here is a "
                 "measurement of anything.", ""]
    head += [f"Device: {facts['name']}" + (f", compute capability {facts['capability']}, driver {facts['driver']}, "
                                           f"CUDA {facts['cuda']}" if "cuda" in facts else "")
             + f"; torch {facts['torch']}, transformers {facts['transformers']}, Python {facts['python']}.",
             f"Latency: batch 1, prompt {args.prompt}, {args.new_tokens} greedy decode steps, median of "
             f"{args.repeats} runs; static cache of {args.max_len} positions. Wall time {wall_min:.1f} min.", ""]
    body = []
    for p in plans:
        body += [f"## {p['plan']}", ""]
        if "skipped" in p:
            body += [f"Skipped: {p['skipped']}", ""]
            continue
        body += ["Step wall times on the device: " + "; ".join(f"{n} {s:.1f} s" for n, _, s in p["steps"]), "",
                 "| step | dtype | runner | prefill ms | decode ms/token | decode tok/s | first run s | compile s |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in p["latency"]:
            if "error" in r:
                body.append(f"| {r['step']} | {r['dtype']} | {r['runner']} | failed: {r['error']} | | | | |")
                continue
            body.append(f"| {r['step']} | {r['dtype']} | {r['runner']} | {r['prefill_ms']:.2f} | "
                        f"{r['decode_ms']:.3f} | {1e3 / r['decode_ms']:.0f} | {r['first_run_s']:.1f} | "
                        + (f"{r['compile_s']:.1f} |" if r["compile_s"] else "– |"))
        body += ["", "Distillation (compress.distillation, KL, base -> pruned student):", "",
                 "| amp | autocast active | tokens | tokens/s |", "|---|---|---:|---:|"]
        body += [f"| {r['amp']} | {r['autocast']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} |" for r in p["distill"]]
        body += ["", "TensorRT parser check (export.trt_check, target TensorRT 10.3) of the base model's fp16 graphs:",
                 ""]
        for r in p["trt"]:
            verdict = "parsable" if not r["n_errors"] else f"{r['n_errors']} errors: " + "; ".join(r["errors"])
            body.append(f"- {r['graph']}: {verdict} ({r['n_warnings']} warnings; ops {', '.join(r['ops'])})")
        body.append("")
    return "\n".join(head + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: exercise the code paths, measure nothing")
    p.add_argument("--plan", type=Path, action="append", help="plans to run (default: quickstart and pipeline)")
    p.add_argument("--graphs", choices=("base", "all", "none"), default=None,
                   help="which steps get the CUDA-graph row (default: base; none with --smoke)")
    p.add_argument("--out", type=Path, default=None, help="where the results file goes (default: bench/results; "
                                                         "with --smoke a temporary folder)")
    p.add_argument("--work", type=Path, default=None, help="run folder of the plans (default: temporary)")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail("no CUDA device here (torch.cuda.is_available() is False); nothing measured, nothing written. "
                    "Use --device cpu --smoke to exercise the code paths.")
    if not args.device.startswith("cuda") and not args.smoke:
        return fail(f"--device {args.device} measures nothing of the GPU path; add --smoke to exercise the code")
    try:
        import compress.pipeline  # noqa: F401  (the project's own dependencies: pydantic, yaml, ...)
        import export.trt_check  # noqa: F401  (onnx)
    except ImportError as e:
        return fail(f"cannot import the project's modules ({e}); install its dependencies "
                    "(pyproject.toml, extras onnx) and run from the checkout")
    if problem := version_problem():
        return fail(problem)
    args.prompt, args.new_tokens, args.repeats, args.max_len = (16, 8, 1, 64) if args.smoke else (128, 64, 5, 256)
    graphs = args.graphs or ("none" if args.smoke else "base")
    plans = args.plan or ([PLANS[0]] if args.smoke else list(PLANS))
    started = time.perf_counter()
    facts = device_facts(args.device)
    results = []
    from compress.errors import UserError

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = args.work or Path(tmp)
        for plan_path in plans:
            entry = {"plan": str(plan_path.relative_to(ROOT) if plan_path.is_relative_to(ROOT) else plan_path)}
            results.append(entry)
            print(f"{entry['plan']}: running its torch steps on {args.device}", file=sys.stderr, flush=True)
            try:
                plan, run = run_torch_steps(plan_path, args.device, args.smoke, work)
            except UserError as e:  # e.g. ../shared/data absent for bench/pipeline.yaml
                entry["skipped"] = str(e).splitlines()[0] + (f" ({str(e).splitlines()[1].strip()})"
                                                             if len(str(e).splitlines()) > 1 else "")
                print(f"  skipped: {entry['skipped']}", file=sys.stderr)
                continue
            entry["steps"] = step_models(run)
            entry["latency"] = []
            for i, (name, model_dir, _) in enumerate(entry["steps"]):
                with_graphs = graphs == "all" or (graphs == "base" and i == 0)
                entry["latency"] += latency_rows(name, model_dir, args.device, args, with_graphs)
            entry["distill"] = distill_rows(plan, entry["steps"], args.device, args.smoke)
            entry["trt"] = trt_rows(entry["steps"][0][0], entry["steps"][0][1])
    text = report(facts, results, args, (time.perf_counter() - started) / 60)
    print("\n" + text)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-gpu-smoke-")) if args.smoke else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu-smoke" if args.smoke else "gpu"
    path = out / f"{datetime.date.today():%Y-%m-%d}-{tag}.md"
    path.write_text(text + "\n")
    print(f"\nwritten to {path}")
    measured = [e for e in results if "skipped" not in e]
    if args.smoke:  # every path must have run: a skipped plan or a failed row is a broken code path
        broken = len(measured) < len(results) or any("error" in r or not math.isfinite(r["decode_ms"])
                                                      for e in measured for r in e["latency"])
        return 1 if broken else 0
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
