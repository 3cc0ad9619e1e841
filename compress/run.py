"""python -m compress.run plan.yaml [--out DIR] [--set key.path=value ...] [--dry-run] [--threads N]

Every failure a user can cause or meet (a bad plan, an unreadable model, a full disk, a read-only
--out, a diverged training) ends as one line on stderr and a non-zero exit, without a traceback:
it says what failed, where, what was kept and how to go on. `--debug` (or GPT2_EDGE_DEBUG=1) shows
the traceback instead. Plan errors come back before torch is imported (see the lazy imports below).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from compress.errors import UserError
from evalsuite import cli
from evalsuite.cli import EXIT_USER, EXIT_WORLD, FAILURES, Terminated  # noqa: F401 (EXIT_* re-exported)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m compress.run",
                           description="Run a gpt2-edge compression plan (prune, distil, quantize, export, "
                                       "with evaluation after every step).")
    p.add_argument("plan", type=Path, help="the plan YAML file")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<plan name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a plan value, e.g. --set steps.0.prune.mlp=0.3 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what each step will do, whether it is cached, and its estimated time, disk and "
                        "peak memory here; load no model")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: no time/disk/memory estimate (it measures this machine once, a few "
                        "seconds, cached in ~/.cache/gpt2-edge/costs.json)")
    p.add_argument("--show-plan", action="store_true",
                   help="with --dry-run: also print the resolved plan (every default filled in)")
    p.add_argument("--threads", type=cli.thread_count, default=None, metavar="N",
                   help="torch threads (default: the plan's `threads`, else OMP_NUM_THREADS, else the physical "
                        "cores); recorded in manifest.json")
    p.add_argument("--trust-cache", action="store_true",
                   help="reuse finished steps without re-reading their files (by default every reused step's "
                        "files are checked against the digests it recorded)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also: GPT2_EDGE_DEBUG=1)")
    return p


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's FPUs; spinning on them is slower)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                core = value.strip()
                cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def choose_threads(cli: int | None, plan: int | None) -> int:
    if cli is not None:
        if cli < 1:
            raise UserError(f"--threads: must be at least 1 (got {cli})")
        return cli
    if plan is not None:
        return plan
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else physical_cores()


def main(argv: list[str] | None = None) -> int:
    with cli.sigterm_raises():  # SIGTERM ends the run like Ctrl-C: one line, finished steps kept
        try:
            return _main(argv)
        except Terminated as e:  # arrived outside _main's own boundary (while parsing arguments)
            return cli.handle(e, debug=False)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("GPT2_EDGE_DEBUG", "") not in ("", "0")
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; only rank 0 reports progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "torch", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = args.out
    try:
        from compress.yaml_io import read_yaml_file

        read_yaml_file(args.plan)  # the file itself (missing, binary, bad YAML) fails before the schema is built
        from compress.plan import dump_plan, load_plan  # no torch: plan errors come back in about a second

        plan = load_plan(args.plan, args.overrides)
        run_dir = args.out or Path("runs") / plan.name
        threads = choose_threads(args.threads, plan.threads)
        if args.dry_run and plan.search is not None:
            print(f"# search on {plan.search.target}, up to {plan.search.max_trials} trial(s), in {run_dir}: "
                  "the candidates are known after stage 1 (profiles) runs")
            return 0
        if args.dry_run:
            from compress.dry_run import dry_run  # no torch: a cached cost model and the plan suffice

            for line in dry_run(plan, run_dir, threads=threads, estimate=not args.no_estimate):
                print(line)
            print(f"# run directory: {run_dir}; threads: {threads}"
                  + ("" if args.show_plan else "; --show-plan prints the resolved plan"))
            if args.show_plan:
                print(dump_plan(plan))
            return 0
        from compress.run_dir import check_out_dir
        from compress.planning import input_paths

        check_out_dir(run_dir, input_paths(plan, args.plan))
        import torch

        torch.set_num_threads(threads)  # manifest.json records it (cpu_threads)
        if plan.search is not None:
            from compress.search.run import run_search

            found = run_search(plan, run_dir, progress=not args.quiet)
            print(f"\nWinner: {found.reason}\nBest plan: {found.best_plan}; front: {run_dir / 'pareto.md'}")
            return 0
        from compress.pipeline import run_plan

        result = run_plan(plan, run_dir, progress=not args.quiet, trust_cache=args.trust_cache)
    except (KeyboardInterrupt, Terminated, *FAILURES) as e:  # one line (evalsuite.cli); the rest keeps its traceback
        return cli.handle(e, debug, run_dir, run=True)
    finally:
        if "compress.distributed" in sys.modules:
            sys.modules["compress.distributed"].shutdown()
    if rank != 0:
        return 0
    print(f"\nReport: {result.report}  (run took {result.wall_s:.1f} s; metrics in {result.run_dir / 'metrics.csv'})")
    return 0


def describe_failure(e: BaseException, run_dir: Path | None) -> tuple[int, str]:
    """(exit code, message) of a failure the user can act on: what failed, where, what was kept, what next."""
    return cli.describe_failure(e, run_dir, run=True)


if __name__ == "__main__":
    sys.exit(main())
