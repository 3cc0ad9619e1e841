"""What each step of a plan will cost on this machine, for --dry-run: time, disk and peak memory.

    rates = machine_rates(shape, threads)          # FLOP/s of a training step and of a forward, measured
    for est in estimate_steps(plan, states, rates): # once per (CPU, threads, torch, shape), then cached
        print(est.line())

The model: a step's `work()` (compress.step_api) says how many tokens it trains (forward + backward
of its output shape, plus a teacher's forward when it has one) and how many it only runs forward
(calibration, on its input shape). Time is those tokens' FLOPs (GPT-2's 2 x parameters per token
forward, plus attention; 3x that to train) over the FLOP/s measured here on the plan's own widths.
Disk is the output's weights at their precision (plus, while a training step runs, its checkpoint:
weights and the two AdamW moments). Peak memory is weights (+ gradients and AdamW moments when
training, + the teacher), activations of one micro-batch, and its logits. The step's evaluation
afterwards is not included. Estimates, not promises: they are meant to tell minutes from hours.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from compress.model_shape import Shape, source_shape
from compress.step_api import StepConfig, Work
from evalsuite.size import gpt2_param_count

if TYPE_CHECKING:
    from compress.plan_state import PlanState

HOUR_S = 3600.0
# python, torch, transformers, ONNX Runtime and the tokenizer in a plan run before any model: the
# quickstart's lightest steps peaked at 677-763 MiB RSS (bench/results/2026-12-07-cold-start.md)
RUNTIME_BYTES = 700 * 2**20
DEFAULT_VOCAB = 50257  # GPT-2's, where the plan does not say (a tokenizer still to be trained or loaded)
CALIBRATION_TOKENS = 512  # at most, per timed forward: FLOP/s of small batches is what steps see, and it is seconds
CALIBRATION_LAYERS = 2  # FLOP/s of the planned widths hardly depends on depth: 2 blocks keep it to seconds


@dataclass(frozen=True)
class Rates:
    """This machine's FLOP/s, measured on `measured_on` (CPU, threads, torch, shape)."""

    train_flops: float  # per second, forward + backward + AdamW step
    forward_flops: float  # per second, forward without gradients
    measured_on: str = ""
    busy: str = ""  # why the measurement is pessimistic ("load 7.3 on 2 cores"); "" when measured quietly


@dataclass
class StepEstimate:
    name: str
    time_s: float | None  # None: the shape is unknown until the model loads
    disk_bytes: int | None
    work_disk_bytes: int = 0  # only while the step runs (checkpoints under .work/)
    peak_bytes: int | None = None
    cached: bool = False
    hint: str = ""  # what to lower when it is long
    why_unknown: str = ""

    def line(self) -> str:
        if self.cached:
            return f"{'':<22} estimate: cached (nothing to run)"
        if self.time_s is None:
            return f"{'':<22} estimate: unknown ({self.why_unknown})"
        extra = f" (+{human(self.work_disk_bytes)} while it runs)" if self.work_disk_bytes else ""
        return (f"{'':<22} estimate: {duration(self.time_s)}, disk {human(self.disk_bytes)}{extra}, "
                f"peak memory {human(self.peak_bytes)}")

    def warning(self) -> str | None:
        if self.time_s is None or self.time_s <= HOUR_S:
            return None
        return (f"warning: {self.name} is estimated at {duration(self.time_s)} on this machine (over an hour)"
                + (f": {self.hint}" if self.hint else ""))


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < HOUR_S:
        return f"{s / 60:.0f} min"
    return f"{s / HOUR_S:.1f} h"


# -- the arithmetic ----------------------------------------------------------------------------------

def params(shape: Shape) -> float:
    return gpt2_param_count(shape.vocab_size or DEFAULT_VOCAB, shape.n_positions, shape.n_layer, shape.n_embd,
                            shape.n_inner, shape.tied)


def forward_flops_per_token(shape: Shape, seq_len: int) -> float:
    """2 per weight a token meets (the position table aside: a lookup), plus attention's QK^T and AV."""
    weights = params(shape) - shape.n_positions * shape.n_embd
    if shape.tied:
        weights += (shape.vocab_size or DEFAULT_VOCAB) * shape.n_embd  # the head multiplies by the embedding too
    return 2 * weights + 4 * shape.n_layer * seq_len * shape.n_embd


def train_flops_per_token(shape: Shape, seq_len: int) -> float:
    return 3 * forward_flops_per_token(shape, seq_len)  # backward: twice the forward


def activation_bytes(shape: Shape, batch: int, seq_len: int, training: bool,
                     logits_positions: int | None = None) -> float:
    """fp32 activations of one micro-batch: kept per block for the backward when training (about
    2 x (34 E + 5 heads T) bytes per token per block, Korthikanti et al. in fp32), one block's worth
    otherwise; and the logits (with their softmax and gradient when training) of every position, or of
    `logits_positions` at a time (distillation's fused head: six such tensors, both models')."""
    tokens = batch * seq_len
    per_block = 2 * (34 * shape.n_embd + 5 * shape.n_head * seq_len) * tokens
    blocks = per_block * (shape.n_layer if training else 1)
    vocab = shape.vocab_size or DEFAULT_VOCAB
    if logits_positions is not None and logits_positions < tokens:
        return blocks + 4 * 6 * logits_positions * vocab
    return blocks + 4 * tokens * vocab * (3 if training else 1)


def weight_bytes(shape: Shape, state: "PlanState") -> float:
    """The weights as the step leaves them: fp32, or the block projections at the quantized bits (with
    an fp16 scale per group) and the rest in fp32."""
    total = params(shape)
    q = state.quantized
    if q is None:
        return 4 * total
    blocks = shape.n_layer * (4 * shape.n_embd ** 2 + 2 * shape.n_embd * shape.n_inner)
    group = q.group_size or shape.n_embd
    return 4 * (total - blocks) + blocks * q.bits / 8 + blocks / group * 2


def teacher_shape(work: Work, state: "PlanState") -> Shape | None:
    if work.teacher is None:
        return None
    if work.teacher == "base":
        return state.base
    try:
        return source_shape(work.teacher)
    except (OSError, ValueError):  # an unreadable dir was refused by the plan already; no estimate for it
        return None


def estimate(name: str, work: Work, before: "PlanState | None", after: "PlanState", rates: Rates) -> StepEstimate:
    """One step's estimate: `before` is the state it receives (None for the source step), `after` its own."""
    out_shape, in_shape = after.shape, (before.shape if before is not None else None)
    if out_shape is None or (work.forward_tokens and in_shape is None):
        return StepEstimate(name, None, None, why_unknown=after.unknown or "the model's shape is known when it loads")
    teacher = teacher_shape(work, after)
    seconds = work.train_tokens * train_flops_per_token(out_shape, work.seq_len) / rates.train_flops
    if teacher is not None:
        seconds += work.train_tokens * forward_flops_per_token(teacher, work.seq_len) / rates.forward_flops
    if work.forward_tokens:
        seconds += work.forward_tokens * forward_flops_per_token(in_shape, work.seq_len) / rates.forward_flops
    weights = weight_bytes(out_shape, after)
    training = work.train_tokens > 0
    state_bytes = weights + (0 if not training or work.lora else 3 * 4 * params(out_shape))  # grads, m, v
    peak = RUNTIME_BYTES + state_bytes + activation_bytes(out_shape, work.batch, work.seq_len, training,
                                                          work.logits_positions)
    if teacher is not None:  # its logits are counted in the student's when they are chunked
        peak += 4 * params(teacher) + activation_bytes(teacher, work.batch, work.seq_len, False,
                                                       0 if work.logits_positions else None)
    if in_shape is not None and in_shape != out_shape:
        peak += 4 * params(in_shape)  # the input model, held while the smaller one is made
    checkpoint = int(state_bytes) if training else 0
    hint = ("lower its tokens, or run it where it is faster (a GPU: device: cuda)" if training
            else "lower its calibration tokens")
    return StepEstimate(name, seconds, int(weights), checkpoint, int(peak), hint=hint)


def estimate_steps(steps: list[StepConfig], states: list["PlanState"], rates: Rates, names: list[str],
                   cached: list[bool]) -> list[StepEstimate]:
    """Per step (the source step first), from the plan-time states that compress.plan_check threads."""
    out, before, vocab = [], None, None
    for name, step, state, done in zip(names, steps, states, cached):
        work = step.work()
        vocab = vocab or work.vocab_size  # the source's tokenizer: every later shape has its vocabulary
        state = with_vocab(state, vocab)
        out.append(StepEstimate(name, 0.0, 0, cached=True) if done else estimate(name, work, before, state, rates))
        before = state
    return out


def with_vocab(state: "PlanState", vocab: int | None) -> "PlanState":
    """The state with `vocab` filled in where its shapes have no vocabulary size (plan time cannot know it)."""
    def fill(shape: Shape | None) -> Shape | None:
        return replace(shape, vocab_size=vocab) if shape is not None and shape.vocab_size is None and vocab else shape

    return replace(state, shape=fill(state.shape), base=fill(state.base))


def memory_total() -> int | None:
    """This machine's memory (MemTotal of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return None


def summary_lines(estimates: list[StepEstimate], memory: int | None = None, busy: str = "") -> list[str]:
    """The totals line, one warning per step estimated over an hour, and one per step whose peak
    memory exceeds this machine's (`memory`, default MemTotal)."""
    known = [e for e in estimates if e.time_s is not None]
    total = sum(e.time_s for e in known)
    disk = sum(e.disk_bytes or 0 for e in known)
    unknown = len(estimates) - len(known)
    lines = [f"estimate: {duration(total)} of step work, {human(disk)} of weights on disk"
             + (f" ({unknown} step(s) not estimated)" if unknown else "")
             + "; evaluation after each step not included"]
    if busy:
        lines.append(f"note: this machine was busy while its speed was measured ({busy}): the times are "
                     "pessimistic and the speed is measured again next time")
    lines += [w for e in estimates if (w := e.warning())]
    memory = memory or memory_total()
    return lines + [f"warning: {e.name} may need {human(e.peak_bytes)} of memory, this machine has {human(memory)}: "
                    "lower its batch_size (or batch_tokens), seq_len or calibration tokens"
                    for e in estimates if memory and e.peak_bytes and e.peak_bytes > memory]


# -- measuring this machine --------------------------------------------------------------------------

def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gpt2-edge" / "costs.json"


def calibration_shape(shape: Shape | None) -> Shape:
    """The planned widths (GPT-2 124M's when the plan's are unknown) with at most CALIBRATION_LAYERS blocks."""
    shape = shape or Shape(n_layer=12, n_head=12, head_dim=64, n_inner=3072, vocab_size=DEFAULT_VOCAB, n_positions=1024)
    return Shape(n_layer=min(shape.n_layer, CALIBRATION_LAYERS), n_head=shape.n_head, head_dim=shape.head_dim,
                 n_inner=shape.n_inner, vocab_size=shape.vocab_size or DEFAULT_VOCAB,
                 n_positions=max(shape.n_positions, CALIBRATION_TOKENS), tied=shape.tied)


def calibration_batch(work: Work | None) -> tuple[int, int]:
    """(batch, seq_len) of the plan's first training micro-batch, at most CALIBRATION_TOKENS tokens."""
    batch, seq = (work.batch, work.seq_len) if work is not None else (1, 128)
    seq = min(seq, CALIBRATION_TOKENS)
    return max(1, min(batch, CALIBRATION_TOKENS // seq)), seq


def rates_key(shape: Shape, threads: int, batch: int, seq: int) -> str:
    from importlib.metadata import version

    from evalsuite.hardware import host_cpu

    return (f"{host_cpu()} | threads {threads} | torch {version('torch')} | "
            f"{shape.n_layer}x{shape.n_embd}, {shape.n_head} heads, n_inner {shape.n_inner}, vocab {shape.vocab_size}"
            f" | batch {batch} x {seq} | fused gelu")  # the activation training runs (compress.precision)


def machine_rates(shape: Shape | None, threads: int, work: Work | None = None, cache: Path | None = None) -> Rates:
    """FLOP/s of this machine on the plan's widths and micro-batch (`work`: the plan's first training
    step's): from the cache, else measured (a few seconds) and cached."""
    cal = calibration_shape(shape)
    batch, seq = calibration_batch(work)
    key, path = rates_key(cal, threads, batch, seq), cache or cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return Rates(known[key]["train_flops"], known[key]["forward_flops"], key)
    before = busy_reason()
    rates = measure_rates(cal, threads, batch, seq, key)
    busy = before or busy_reason()
    if busy:  # other work's threads halve (or worse) what a step gets here: not cached, measured again next time
        return replace(rates, busy=busy)
    known[key] = {"train_flops": rates.train_flops, "forward_flops": rates.forward_flops,
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time, nothing else changes
    return rates


def busy_reason() -> str:
    """"load 7.3 on 2 cores" when the machine's 1-minute load average exceeds its cores (a rate measured
    then is pessimistic and is not cached); "" otherwise or where the load is unknown."""
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return ""
    return f"load {load:.1f} on {cores} cores" if load > cores else ""


def measure_rates(shape: Shape, threads: int, batch: int, seq: int, key: str = "", repeats: int = 2) -> Rates:
    """Time forward + backward + AdamW, and forward alone, of a random model of `shape` on a
    (batch, seq) micro-batch (after one warm-up each), with `threads` torch threads."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    config = GPT2Config(vocab_size=shape.vocab_size, n_positions=shape.n_positions, n_layer=shape.n_layer,
                        n_embd=shape.n_embd, n_head=shape.n_head, n_inner=shape.n_inner,
                        tie_word_embeddings=shape.tied)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, shape.vocab_size, (batch, seq))

    def train_step() -> None:
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    from compress.precision import fused_gelu

    timings = {}
    with fused_gelu(model):  # as the training loops run it
        for label, fn in (("train", train_step), ("forward", forward)):
            fn()  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            timings[label] = (time.perf_counter() - t0) / repeats
    per_token = forward_flops_per_token(shape, seq) * batch * seq
    return Rates(train_flops=3 * per_token / timings["train"], forward_flops=per_token / timings["forward"],
                 measured_on=key)
