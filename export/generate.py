"""Text generation on any Runner (ONNX Runtime, torch, TensorRT) with a KV cache, streamed as it goes.

    python -m export.generate runs/quickstart/05-export-onnx "Once upon a time" --max-new-tokens 50
    python -m export.generate runs/quickstart/00-base/model "Once upon a time" --sample --top-p 0.9
    python -m export.generate runs/x/00-base/model --draft runs/x/04-export-onnx "Once upon a time" -k 4

The same `generate()` drives every backend, so a torch checkpoint and its ONNX export can be compared
token by token (greedy decoding must agree). torch is imported by the functions that run a model, so
`--help` and argument errors answer without it (tests/test_cold_start.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import UserError
from evalsuite import cli

if TYPE_CHECKING:
    from evalsuite.runner import Runner


def __getattr__(name: str):
    if name == "next_token_logits":  # re-exported (evalsuite.sampling imports torch: only on first use)
        from evalsuite.sampling import next_token_logits

        return next_token_logits
    raise AttributeError(f"module 'export.generate' has no attribute {name!r}")


class GenerationConfig(BaseModel):
    """Decoding controls (Hugging Face's names and meanings). Greedy unless do_sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(50, ge=1, le=100_000)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=100)
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(1.0, gt=0, le=1, description="keep the smallest set with this much probability")
    repetition_penalty: float = Field(1.0, gt=0, le=100, description="> 1 discourages tokens already seen")
    stop_at_eos: bool = True
    eos_token_id: int | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _sampling_knobs_need_sampling(self) -> "GenerationConfig":
        set_ = [k for k in ("temperature", "top_k", "top_p") if k in self.model_fields_set]
        if set_ and not self.do_sample:
            raise ValueError(f"{', '.join(set_)}: only used when sampling; add do_sample (--sample)")
        return self


def generate(runner: Runner, prompt_ids: list[int], cfg: GenerationConfig,
             on_token: Callable[[int], None] | None = None) -> list[int]:
    """New token ids after `prompt_ids` (batch 1), calling on_token for each as soon as it is chosen."""
    import torch

    with torch.inference_mode():
        return _generate(runner, prompt_ids, cfg, on_token)


def _generate(runner: Runner, prompt_ids: list[int], cfg: GenerationConfig,
              on_token: Callable[[int], None] | None) -> list[int]:
    import torch

    from evalsuite.sampling import choose_token, next_token_logits

    if not prompt_ids:
        raise UserError("the prompt is empty (it tokenized to no ids)")
    if len(prompt_ids) >= runner.max_positions:
        raise UserError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {runner.max_positions}")
    gen = torch.Generator().manual_seed(cfg.seed)
    seen = torch.tensor(prompt_ids, dtype=torch.long)
    prefill = getattr(runner, "forward_last", runner.forward)  # the last position's logits suffice
    logits, past = prefill(seen.unsqueeze(0))  # prefill (1, T)
    out: list[int] = []
    while True:
        scores = next_token_logits(logits[0, -1].cpu(), seen, cfg)
        token = choose_token(scores, cfg.do_sample, gen)
        out.append(token)
        seen = torch.cat([seen, torch.tensor([token])])
        if on_token is not None:
            on_token(token)
        full = seen.numel() >= runner.max_positions  # no position left for another token
        if len(out) >= cfg.max_new_tokens or full or (cfg.stop_at_eos and token == cfg.eos_token_id):
            return out
        logits, past = runner.forward(torch.tensor([[token]]), past)  # decode step (1, 1)


class TextStream:
    """Print decoded text as tokens arrive; holds back an incomplete UTF-8 character (shown as U+FFFD)."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.out.write(text[self.printed:])
            self.out.flush()
            self.printed = len(text)


# -- opening whatever the user points at --------------------------------------------------------------

def open_any(path: str | Path, device: str = "cpu", threads: int | None = None) -> tuple[Runner, Path]:
    """A runner and the directory holding its tokenizer, for: a run's step dir (step.json), a dir with
    model.onnx, a .onnx file, or a torch model dir (config.json + safetensors)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    step = path / "step.json"
    if step.is_file():
        info = json.loads(step.read_text())
        rel = info.get("artifact") or info.get("model_dir")
        if info.get("backend", "torch") not in ("torch", "onnxruntime"):
            from evalsuite.backends import BackendUnavailable, open_backend

            try:
                return open_backend(info["backend"], path / rel, device), path
            except BackendUnavailable as e:
                onnx_file = path / "model.onnx"
                alt = f"; or run its ONNX file with ONNX Runtime here: python -m export.generate {onnx_file} ..." \
                    if onnx_file.is_file() else ""
                raise UserError(f"{path}: a {info['backend']} step: {e}{alt}") from None
        return open_any(path / rel, device, threads)
    if path.is_dir() and (path / "model.onnx").is_file():
        path = path / "model.onnx"
    if path.suffix == ".onnx":  # model.onnx: its fused decode graph when the export wrote one
        from export.ort_runner import open_runner

        return open_runner(path, device, threads), path.parent
    from compress.models import load_model
    from evalsuite.runner import TorchRunner

    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchRunner(load_model(path), device), path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m export.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="step dir of a run, dir with model.onnx, a .onnx file, or a torch model dir")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no-stop-at-eos", action="store_true", help="keep going past the end-of-text token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=cli.thread_count, help="intra-op threads (default: torch's setting)")
    p.add_argument("--draft", help="speculative decoding: a smaller model with the same tokenizer (any of the "
                                   "forms MODEL takes) proposes tokens that MODEL verifies (docs/speculative.md)")
    p.add_argument("-k", type=int, help="draft tokens per target call (with --draft; default 4)")
    p.add_argument("--adaptive", action="store_true", help="with --draft: adapt k to the acceptance as it goes")
    return cli.add_debug_flag(p).parse_args(argv)


def config_from_args(args: argparse.Namespace, eos_token_id: int | None) -> GenerationConfig:
    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    try:
        return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                repetition_penalty=args.repetition_penalty, stop_at_eos=not args.no_stop_at_eos,
                                eos_token_id=eos_token_id, seed=args.seed,
                                **{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        where = f"--{str(err['loc'][0]).replace('_', '-')}: " if err["loc"] else ""
        raise UserError(f"{where}{err['msg'].removeprefix('Value error, ')}") from None


def main(argv: list[str] | None = None) -> int:
    """One line on stderr and exit 2 / 3 for every failure a user can cause or meet (evalsuite.cli)."""
    return cli.run_cli(lambda: _main(argv), argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    cli.check_device(args.device)
    from compress.models import load_tokenizer

    runner, tok_dir = open_any(args.model, args.device, args.threads)
    tokenizer = load_tokenizer(tok_dir)
    cfg = config_from_args(args, tokenizer.eos_token_id)
    ids = tokenizer.encode(args.prompt)
    threads = getattr(runner, "threads", None) or _torch_threads()
    print(f"[{runner.backend} on {runner.device}, {threads} threads: {args.model}]", file=sys.stderr)
    if not args.draft and (args.k is not None or args.adaptive):
        raise UserError("-k, --adaptive: only used with --draft DRAFT")
    if args.draft:
        draft = open_draft(args, tokenizer)
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    if args.draft:
        out, stats = generate_with_draft(runner, args, ids, cfg, TextStream(tokenizer), draft)
    else:
        out, stats = generate(runner, ids, cfg, TextStream(tokenizer)), None
    wall = time.perf_counter() - t0
    print()
    print(f"[{len(out)} tokens in {wall:.2f} s, {len(out) / wall:.1f} tokens/s incl. prefill]", file=sys.stderr)
    if stats is not None:
        print(f"[draft: {stats.accepted} of {stats.proposed} proposed tokens accepted "
              f"({stats.acceptance_rate:.0%}), {stats.tokens_per_target_call:.2f} tokens per target call, "
              f"{stats.target_calls} target and {stats.draft_calls} draft calls, "
              f"{stats.new_tokens / max(stats.decode_s, 1e-9):.1f} tokens/s after the prefill]", file=sys.stderr)
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def open_draft(args: argparse.Namespace, tokenizer) -> Runner:
    """The --draft model, refused unless its tokenizer is the target's (by content digest, not by size)."""
    from compress.models import TOKENIZER_FILES, load_tokenizer
    from evalsuite.errors import EvalInputError
    from evalsuite.speculative import check_same_tokenizer

    k = 4 if args.k is None else args.k
    if not 1 <= k <= 64:
        raise UserError(f"-k: must be in 1..64 (got {k})")
    draft, draft_tok_dir = open_any(args.draft, args.device, args.threads)
    if any(all((Path(draft_tok_dir) / f).is_file() for f in files) for files in TOKENIZER_FILES):
        try:
            check_same_tokenizer(tokenizer, load_tokenizer(draft_tok_dir), f"--draft {args.draft}")
        except EvalInputError as e:
            raise UserError(str(e)) from None
    else:
        print(f"[draft: no tokenizer beside {draft_tok_dir}: only its vocabulary size is compared with the "
              "target's]", file=sys.stderr)
    return draft


def generate_with_draft(runner: Runner, args: argparse.Namespace, ids: list[int], cfg: GenerationConfig,
                        on_token: Callable[[int], None], draft: Runner | None = None):
    """Speculative decoding of `runner` with the --draft model: the same tokens as generate() when
    greedy, the same distribution when sampling (evalsuite.speculative)."""
    from evalsuite.errors import EvalInputError
    from evalsuite.sampling import next_token_logits
    from evalsuite.speculative import SpeculativeSettings, speculative_generate, turn_taking

    k = 4 if args.k is None else args.k
    if not 1 <= k <= 64:
        raise UserError(f"-k: must be in 1..64 (got {k})")
    if draft is None:
        draft, _ = open_any(args.draft, args.device, args.threads)
    runner, draft = turn_taking(runner), turn_taking(draft)  # sessions that do not spin against each other
    print(f"[draft: {draft.backend} on {draft.device}: {args.draft}, k={k}"
          f"{' (adaptive)' if args.adaptive else ''}]", file=sys.stderr)
    try:
        settings = SpeculativeSettings(k=k, max_new_tokens=cfg.max_new_tokens, sample=cfg.do_sample,
                                       seed=cfg.seed, eos_token_id=cfg.eos_token_id if cfg.stop_at_eos else None,
                                       adaptive=args.adaptive, max_k=max(8, k))
        result = speculative_generate(runner, draft, ids, settings, lambda logits, seen: next_token_logits(
            logits, seen, cfg), on_token)
    except EvalInputError as e:
        raise UserError(f"--draft {args.draft}: {e}") from None
    return result.tokens, result.stats


if __name__ == "__main__":
    sys.exit(main())
