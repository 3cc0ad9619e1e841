"""QAT vs PTQ at int4 g128 on the reference teacher: one arm per call, a report over all arms logged.

    python bench/qat.py arm --method rtn --tokens 16384 --scales learned      # one QAT arm -> a JSON line
    python bench/qat.py arm --method gptq --tokens 65536 --scales frozen --lr 1e-4 --loss ce
    python bench/qat.py report                                                 # -> results/<date>-qat.md

Every arm: the reference teacher quantized int4 g128 (rtn or gptq, GPTQ calibrated on 32 windows of
256 tokens of corpus/train), trained through compress.qat.run_qat on corpus/train (batch 4 x 256, no
in-training eval: the codes after the last step are measured), then evaluated on the first
--eval-tokens of corpus/heldout at non-overlapping 256-token windows. The teacher's and each PTQ model's
per-window losses are computed once and cached beside the log. "Gap recovered" =
(ppl_ptq - ppl_qat) / (ppl_ptq - ppl_teacher) on the same windows; its noise is a bootstrap over the
windows (2.5-97.5% of 2000 resamples, teacher, PTQ and QAT resampled together; the same
resamples for every arm).
Arms are short on purpose (the bench machine is shared): run several in parallel with --threads 1.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import sys
import time
from pathlib import Path

import torch

from compress.models import load_model, load_tokenizer
from compress.qat.config import QatConfig
from compress.qat.loop import run_qat
from compress.quantization import quantize
from compress.quantization.config import QuantizeConfig
from evalsuite import hardware
from evalsuite.data import read_text, tokenize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LEN = 256


@torch.no_grad()
def window_nll(model, ids: torch.Tensor) -> list[float]:
    """Mean next-token loss of each non-overlapping SEQ_LEN window of `ids`."""
    model.eval()
    n = (ids.numel() - 1) // SEQ_LEN
    x = ids[: n * SEQ_LEN].view(n, SEQ_LEN)
    y = ids[1: n * SEQ_LEN + 1].view(n, SEQ_LEN)
    out = []
    for i in range(0, n, 8):
        logits = model(input_ids=x[i:i + 8]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + 8].flatten(), reduction="none")
        out += loss.view(-1, SEQ_LEN).mean(1).tolist()
    return out


def cached_nll(cache: Path, key: str, make) -> list[float]:
    f = cache / f"{key}.json"
    if f.exists():
        return json.loads(f.read_text())
    nll = make()
    cache.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(nll))
    return nll


def arm(args) -> int:
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(TEACHER)
    train_ids = tokenize(read_text(DATA / "corpus" / "train"), tokenizer)
    held = tokenize(read_text(DATA / "corpus" / "heldout"), tokenizer)[: args.eval_tokens + 1]
    teacher = load_model(TEACHER)
    cache = args.log.parent / "cache"
    tag = f"{args.eval_tokens}"
    cached_nll(cache, f"teacher-{tag}", lambda: window_nll(teacher, held))
    ptq = quantize(copy.deepcopy(teacher), QuantizeConfig(method=args.method, bits=4, group_size=128,
                                                          calib_samples=32, calib_seq_len=SEQ_LEN), train_ids)
    cached_nll(cache, f"ptq-{args.method}-{tag}", lambda: window_nll(ptq, held))
    cfg = QatConfig(tokens=args.tokens, seq_len=SEQ_LEN, batch_size=4, lr=args.lr, warmup_steps=2, eval_tokens=0,
                    scales=args.scales, scale_lr=args.scale_lr, temperature=1.0,
                    kl=0.0 if args.loss == "ce" else 1.0, ce=0.0 if args.loss == "kl" else 1.0)
    t0 = time.perf_counter()
    model, r = run_qat(ptq, teacher, train_ids, cfg, seed=args.seed, progress=args.progress)
    wall = time.perf_counter() - t0
    row = dict(method=args.method, tokens=r.tokens, scales=args.scales, lr=args.lr, scale_lr=args.scale_lr,
               loss=args.loss, seed=args.seed, eval_tokens=args.eval_tokens, codes_moved=r.codes_changed / r.codes_total,
               wall_s=round(wall), nll=window_nll(model, held))
    with args.log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print({k: v for k, v in row.items() if k != "nll"}, "ppl", math.exp(sum(row["nll"]) / len(row["nll"])))
    return 0


def ppl(nll: torch.Tensor) -> torch.Tensor:
    return nll.mean(-1).exp()


def report(args) -> int:
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    cache = args.log.parent / "cache"
    lines = ["| method | scales | loss | lr | scale lr | tokens | seed | PTQ ppl | QAT ppl | teacher ppl | "
             "ppl / teacher (PTQ -> QAT) | gap recovered | 95% interval (windows) | codes moved |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["tokens"], r["scales"], r["loss"], r["lr"], r["seed"])):
        tag = r["eval_tokens"]
        t = torch.tensor(json.loads((cache / f"teacher-{tag}.json").read_text()))
        p = torch.tensor(json.loads((cache / f"ptq-{r['method']}-{tag}.json").read_text()))
        q = torch.tensor(r["nll"])
        idx = torch.randint(0, t.numel(), (2000, t.numel()), generator=torch.Generator().manual_seed(0))
        rec = (ppl(p[idx]) - ppl(q[idx])) / (ppl(p[idx]) - ppl(t[idx]))
        lo, hi = torch.quantile(rec, torch.tensor([0.025, 0.975])).tolist()
        pt, pp, pq = ppl(t).item(), ppl(p).item(), ppl(q).item()
        lines.append(f"| {r['method']} | {r['scales']} | {r['loss']} | {r['lr']:g} | "
                     f"{r['scale_lr']:g}{'' if r['scales'] == 'learned' else ' (unused)'} | {r['tokens']:,} | "
                     f"{r['seed']} | {pp:.3f} | {pq:.3f} | {pt:.3f} | {pp / pt:.4f} -> {pq / pt:.4f} | "
                     f"{(pp - pq) / (pp - pt):.0%} | {lo:.0%} .. {hi:.0%} | {r['codes_moved']:.2%} |")
    lines += ["", "Learned vs frozen scales, paired on the same windows (same method, loss, lr, tokens, seed): "
              "difference in gap recovered, and in mean held-out loss (nats, +- one standard error over windows)", ""]
    for r in rows:
        twin = [f for f in rows if f["scales"] == "frozen" and r["scales"] == "learned"
                and all(f[k] == r[k] for k in ("method", "loss", "lr", "tokens", "seed", "eval_tokens"))]
        for f in twin:
            tag = r["eval_tokens"]
            t = torch.tensor(json.loads((cache / f"teacher-{tag}.json").read_text()))
            p = torch.tensor(json.loads((cache / f"ptq-{r['method']}-{tag}.json").read_text()))
            lq, fq = torch.tensor(r["nll"]), torch.tensor(f["nll"])
            idx = torch.randint(0, t.numel(), (2000, t.numel()), generator=torch.Generator().manual_seed(0))
            d = (ppl(fq[idx]) - ppl(lq[idx])) / (ppl(p[idx]) - ppl(t[idx]))
            lo, hi = torch.quantile(d, torch.tensor([0.025, 0.975])).tolist()
            diff = lq - fq
            lines.append(f"- {r['method']}, {r['tokens']:,} tokens, seed {r['seed']}: learned - frozen = "
                         f"{(ppl(fq) - ppl(lq)).item() / (ppl(p) - ppl(t)).item():+.0%} of the gap "
                         f"(95%: {lo:+.0%} .. {hi:+.0%}); loss {diff.mean().item():+.5f} "
                         f"+- {diff.std().item() / diff.numel() ** 0.5:.5f} nats")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("arm", help="one QAT arm, appended to --log")
    a.add_argument("--method", choices=("rtn", "gptq"), required=True)
    a.add_argument("--tokens", type=int, default=16_384)
    a.add_argument("--scales", choices=("learned", "frozen"), default="learned")
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--scale-lr", type=float, default=1e-3)
    a.add_argument("--loss", choices=("kl", "ce", "kl+ce"), default="kl")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--eval-tokens", type=int, default=49_152)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--progress", action="store_true")
    a.add_argument("--log", type=Path, default=Path("/tmp/qatbench/runs.jsonl"))
    r = sub.add_parser("report", help="the table over every logged arm")
    r.add_argument("--log", type=Path, default=Path("/tmp/qatbench/runs.jsonl"))
    r.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    if args.cmd == "arm":
        args.log.parent.mkdir(parents=True, exist_ok=True)
        return arm(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
