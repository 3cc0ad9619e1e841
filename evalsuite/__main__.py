"""python -m evalsuite MODEL --data PATH [...]    measure one model, print its report row
python -m evalsuite compare RUN_A RUN_B [--force] two runs' tables and their ratios (refused when
                                                 they measured perplexity differently)

MODEL is a GPT-2 checkpoint directory, an ONNX file (or a directory with one), or a step directory
of a run (runs/<name>/03-quantize). Failures are one line on stderr (evalsuite.cli): exit 2 for bad
input, 3 when the machine says no; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evalsuite import cli
from evalsuite.errors import EvalInputError
from evalsuite.hardware import KNOWN_TARGETS

DEFAULT_TARGETS = ("orin-nano", "agx-orin", "host")


def eval_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m evalsuite",
                                description="Measure one GPT-2 (checkpoint dir, ONNX file or step dir): perplexity, "
                                            "latency, size, projected tokens/s, sample generations. "
                                            "`python -m evalsuite compare RUN_A RUN_B` compares two runs.")
    p.add_argument("model", type=Path, help="checkpoint directory, .onnx file, or a run's step directory")
    p.add_argument("--data", type=Path, required=True, help="text file or directory of .txt files to score")
    p.add_argument("--seq-len", type=int, default=256, help="perplexity window length (default 256)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: seq-len, no overlap)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the text")
    p.add_argument("--prompt", type=int, default=128, help="latency: prompt tokens (default 128)")
    p.add_argument("--new-tokens", type=int, default=64, help="latency: decode steps (default 64)")
    p.add_argument("--repeats", type=int, default=10, help="latency: timed runs (default 10)")
    p.add_argument("--threads", type=cli.thread_count, default=None, help="latency: torch threads (default: torch's own)")
    p.add_argument("--targets", nargs="+", choices=KNOWN_TARGETS, default=list(DEFAULT_TARGETS),
                   help=f"devices to project decode tokens/s for (default: {' '.join(DEFAULT_TARGETS)})")
    p.add_argument("--sample", dest="samples", action="append", default=None, metavar="TEXT",
                   help="a prompt to continue greedily (repeatable; default: three built-in prompts)")
    p.add_argument("--sample-tokens", type=int, default=32, help="tokens per sample (0: no samples)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (default: beside the model)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics dict to this file")
    return cli.add_debug_flag(p)


def compare_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m evalsuite compare", description="Compare two run directories.")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--force", action="store_true",
                   help="print ratios even when the runs measured perplexity differently (tokenizer, eval data, "
                        "seq_len, stride), marked NOT COMPARABLE")
    return cli.add_debug_flag(p)


def _settings(args: argparse.Namespace):
    from evalsuite.metrics import EvalSettings
    from evalsuite.samples import DEFAULT_PROMPTS

    for name in ("seq_len", "prompt", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise EvalInputError(f"--{name.replace('_', '-')}: must be at least 1 (got {getattr(args, name)})")
    latency = {"prompt": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads}
    prompts = tuple(args.samples or DEFAULT_PROMPTS) if args.sample_tokens > 0 else ()
    return EvalSettings(seq_len=args.seq_len, stride=args.stride, max_tokens=args.max_tokens, latency=latency,
                        targets=tuple(args.targets), sample_prompts=prompts, sample_tokens=args.sample_tokens)


def run_eval(argv: list[str]) -> str:
    args = eval_parser().parse_args(argv)  # before torch: --help and argument errors answer at once
    settings = _settings(args)
    from evalsuite.standalone import evaluate_path
    from evalsuite.summary import markdown_table, protocol_lines

    m = evaluate_path(args.model, args.data, settings, cli.check_device(args.device), args.tokenizer, progress=False)
    if args.json:
        args.json.write_text(json.dumps(m, indent=1) + "\n")
    out = [markdown_table([m], relative=False), ""] + [f"- {line}" for line in protocol_lines([m])]
    for s in m.get("samples") or []:
        out.append(f"- sample: {s['prompt']!r} → {s['text']!r}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        args = compare_parser().parse_args(argv[1:])
        from evalsuite.compare import compare_runs

        print(compare_runs(args.run_a, args.run_b, force=args.force))
    else:
        print(run_eval(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
