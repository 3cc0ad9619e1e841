"""Is speculative decoding worth it for this target and draft? Measured per k, and projected per device.

    result = measure_speculative(target, draft, prompts_from(eval_ids, 4, 128), target_facts, draft_facts,
                                 SpeculativeMeasureSettings(ks=(2, 4, 6)), targets=("orin-nano", "host"))

Measured (on this machine, batch 1, the latency protocol: real text prompts of `prompt` tokens,
`new_tokens` greedy tokens, warm-up, `repeats` round-robin rounds so that load from other processes
hits every configuration alike): acceptance rate, tokens per target call, decode tokens/s of the target
alone and with the draft at each k, whether the text is identical to the target's greedy text.

Projected (memory-bandwidth roofline, evalsuite.hardware): a decode call of a model reads its weights
and its KV cache once, whether it scores 1 position or k+1, so on a device of bandwidth B
    t_model = (weight bytes read + KV bytes) / B,   speedup = E[tokens per target call] / (1 + k t_draft / t_target)
with E measured here (the acceptance is a property of the pair, not of the device). The ratio
t_draft / t_target depends on the device only through the KV precision (fp16 on GPUs, fp32 on the
host), so the projection differs little between devices; what it leaves out is the fixed cost of
each call (kernel launches, runtime overhead), which a small draft pays k times and which makes
drafts lose on small GPUs. A projection is an upper bound, never a measurement.

Verdict per device: "worth it" only where the speedup (measured where measured, else projected) is
above WORTH_IT (1.1x) at some k.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch

from evalsuite import hardware
from evalsuite.errors import EvalInputError
from evalsuite.latency import _one_run, pinned_threads
from evalsuite.metrics import ModelFacts
from evalsuite.runner import Runner
from evalsuite.samples import greedy
from evalsuite.size import PeakMemory
from evalsuite.speculative import SpeculativeSettings, speculative_generate, turn_taking

WORTH_IT = 1.1
MEASURED = "measured here"


@dataclass(frozen=True)
class SpeculativeMeasureSettings:
    ks: tuple[int, ...] = (2, 4, 6)
    prompt: int = 128
    new_tokens: int = 64
    prompts: int = 4
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    adaptive: bool = False  # also measure adaptive k, starting at each k


def prompts_from(eval_ids: torch.Tensor, n: int, length: int) -> list[list[int]]:
    """n prompts of `length` tokens, evenly spaced over a token stream (real text: acceptance on random
    ids says nothing)."""
    if eval_ids.numel() < length + 1:
        raise EvalInputError(f"speculative: the eval text has {eval_ids.numel()} tokens, fewer than one "
                             f"{length}-token prompt")
    starts = torch.linspace(0, eval_ids.numel() - length - 1, n).long().unique().tolist()
    return [eval_ids[s:s + length].tolist() for s in starts]


def step_seconds(facts: ModelFacts, device: str, context: int) -> float:
    """Roofline time of one decode call: weights read once plus the KV cache, at the device's bandwidth."""
    t = hardware.target(device)
    kv = hardware.kv_bytes_per_token(facts.n_layer, facts.n_embd, context, 4 if device == hardware.HOST else 2)
    return (facts.read_bytes + kv) / (t.memory_bandwidth_gb_s * 1e9)


def projected_speedup(tokens_per_call: float, k: float, target: ModelFacts, draft: ModelFacts, device: str,
                      context: int) -> float:
    """E[tokens per target call] / (1 + k t_draft / t_target) on `device` (roofline times)."""
    c = step_seconds(draft, device, context) / step_seconds(target, device, context)
    return tokens_per_call / (1 + k * c)


def _kv_bytes(facts: ModelFacts, context: int) -> int:
    return hardware.kv_bytes_per_token(facts.n_layer, facts.n_embd, context, 4)  # fp32 cache as run here


def measure_speculative(target: Runner, draft: Runner, prompts: list[list[int]], target_facts: ModelFacts,
                        draft_facts: ModelFacts, settings: SpeculativeMeasureSettings | None = None,
                        targets: tuple[str, ...] = ("orin-nano", "agx-orin")) -> dict[str, Any]:
    """Everything the report's speculative section shows, as one JSON-able dict."""
    settings = settings or SpeculativeMeasureSettings()
    if not prompts:
        raise EvalInputError("speculative: no prompts to measure on")
    longest = max(len(p) for p in prompts) + settings.new_tokens + max(settings.ks)
    if longest > target.max_positions:
        raise EvalInputError(f"speculative: prompt {settings.prompt} + new_tokens {settings.new_tokens} + k "
                             f"{max(settings.ks)} exceeds the target's {target.max_positions} positions")
    configs = [(k, False) for k in settings.ks] + ([(k, True) for k in settings.ks] if settings.adaptive else [])
    spec = {c: SpeculativeSettings(k=c[0], max_new_tokens=settings.new_tokens, adaptive=c[1]) for c in configs}
    # The pair runs in non-spinning sessions (turn_taking); the target alone keeps its fastest session.
    pair_target, pair_draft = turn_taking(target), turn_taking(draft)
    with pinned_threads(settings.threads) as threads:
        reference = [greedy(target, p, settings.new_tokens) for p in prompts]  # the target's own text
        checks: dict[tuple, dict] = {}
        with PeakMemory(target.device) as mem:
            for c in configs:  # once untimed: the text, the acceptance (greedy: the same every round)
                results = [speculative_generate(pair_target, pair_draft, p, spec[c]) for p in prompts]
                checks[c] = _acceptance(results, reference)
        times: dict[Any, list[float]] = {"target": [], **{c: [] for c in configs}}
        calls: dict[tuple, list[dict[str, float]]] = {c: [] for c in configs}
        for round_ in range(settings.warmup + settings.repeats):
            ms, call_ms = {"target": _target_ms(target, prompts, settings.new_tokens)}, {}
            for c in configs:
                stats = [speculative_generate(pair_target, pair_draft, p, spec[c]).stats for p in prompts]
                ms[c] = 1e3 * sum(s.decode_s for s in stats) / sum(s.new_tokens for s in stats)
                call_ms[c] = _call_ms(stats)
            if round_ >= settings.warmup:
                for key, value in ms.items():
                    times[key].append(value)
                for key, value in call_ms.items():
                    calls[key].append(value)
    context = settings.prompt + settings.new_tokens
    alone_ms = statistics.median(times["target"])
    per_k = []
    for c in configs:
        k, adaptive = c
        ms_tok = statistics.median(times[c])
        row = {"k": k, "adaptive": adaptive, **checks[c], "decode_ms_per_token": ms_tok,
               "decode_tokens_per_s": 1e3 / ms_tok, "speedup": alone_ms / ms_tok,
               **{key: statistics.median(r[key] for r in calls[c]) for key in calls[c][0]}}
        k_mean = row["mean_k"] if adaptive else k  # adaptive: the draft calls made per target call on average
        row["projected_speedup"] = {d: projected_speedup(row["tokens_per_target_call"], k_mean, target_facts,
                                                          draft_facts, d, context) for d in targets}
        per_k.append(row)
    return {
        "target": {"backend": target.backend, "weight_bytes": target_facts.weight_bytes,
                   "read_bytes_per_token": target_facts.read_bytes, "kv_bytes": _kv_bytes(target_facts, context)},
        "draft": {"backend": draft.backend, "weight_bytes": draft_facts.weight_bytes,
                  "read_bytes_per_token": draft_facts.read_bytes, "kv_bytes": _kv_bytes(draft_facts, context)},
        "protocol": {**asdict(settings), "ks": list(settings.ks), "prompts": len(prompts), "threads": threads,
                     "device": target.device},
        "target_alone": {"decode_ms_per_token": alone_ms, "decode_tokens_per_s": 1e3 / alone_ms},
        # the process while decoding with the draft: both models, and the target's second session
        # (turn_taking) when it has one
        "peak_mem_bytes": mem.peak_bytes,
        "per_k": per_k,
        "verdict": verdicts(per_k, targets, target.device),
    }


def _target_ms(target: Runner, prompts: list[list[int]], new_tokens: int) -> float:
    """The target alone, as evalsuite.latency times it: ms per greedy decode step after the prefill."""
    steps = []
    for p in prompts:
        steps += _one_run(target, torch.tensor([p], dtype=torch.long), new_tokens)[1]
    return sum(steps) / len(steps)


def _call_ms(stats) -> dict[str, float]:
    """Mean ms of one verification call (k+1 positions) and of one draft call: why a k pays or not."""
    target_calls, draft_calls = sum(s.target_calls for s in stats), sum(s.draft_calls for s in stats)
    return {"target_call_ms": 1e3 * sum(s.target_call_s for s in stats) / target_calls,
            "draft_call_ms": 1e3 * sum(s.draft_call_s for s in stats) / draft_calls if draft_calls else 0.0}


def _acceptance(results, reference: list[list[int]]) -> dict[str, Any]:
    proposed = sum(r.stats.proposed for r in results)
    calls = sum(r.stats.target_calls for r in results)
    mismatches = [i for i, (r, ref) in enumerate(zip(results, reference)) if r.tokens != ref]
    return {"acceptance_rate": sum(r.stats.accepted for r in results) / proposed if proposed else 0.0,
            "tokens_per_target_call": sum(r.stats.new_tokens for r in results) / calls,
            "mean_k": statistics.mean(v for r in results for v in r.stats.ks),
            "identical_to_target": not mismatches, "prompts_differing": mismatches}


def verdicts(per_k: list[dict[str, Any]], targets: tuple[str, ...], device: str) -> list[dict[str, Any]]:
    """Per device: the best k, its speedup, and whether that is worth it (> WORTH_IT). The measuring
    machine's row uses the measured speedup; target devices use the projection."""
    def best(key) -> dict[str, Any]:
        row = max(per_k, key=key)
        return {"k": row["k"], "adaptive": row["adaptive"], "speedup": key(row)}

    out = [{"device": f"{MEASURED} ({device})", "kind": "measured", **best(lambda r: r["speedup"])}]
    for d in targets:
        out.append({"device": d, "kind": "projected", **best(lambda r, d=d: r["projected_speedup"][d])})
    for v in out:
        v["worth_it"] = v["speedup"] > WORTH_IT
    return out
