"""python -m compress.run plan.yaml [--out DIR] [--set key.path=value ...] [--dry-run]"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from compress import distributed
from compress.errors import UserError
from evalsuite.errors import EvalInputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress.run",
                                description="Run a gpt2-edge compression plan (prune, distil, quantize, export, "
                                            "with evaluation after every step).")
    p.add_argument("plan", type=Path, help="the plan YAML file")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<plan name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a plan value, e.g. --set steps.0.prune.mlp=0.3 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and what each step will do; load no model")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun only rank 0 reports progress; the other ranks speak up on warnings
    logging.basicConfig(level=logging.INFO if distributed.env_rank() == 0 else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "torch", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from compress.plan import dump_plan, load_plan
        from compress.runner import dry_run, run_plan

        plan = load_plan(args.plan, args.overrides)
        run_dir = args.out or Path("runs") / plan.name
        if args.dry_run:
            print(dump_plan(plan))
            print(f"# run directory: {run_dir}")
            for line in dry_run(plan, run_dir):
                print(line)
            return 0
        result = run_plan(plan, run_dir, progress=not args.quiet)
    except (UserError, EvalInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished steps are kept; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if distributed.env_rank() != 0:
        return 0
    print(f"\nReport: {result.report}  (run took {result.wall_s:.1f} s; metrics in {result.run_dir / 'metrics.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
