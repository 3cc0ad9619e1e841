"""Stage 2: candidate plans from the profiles, with exact size and projected speed, none of them run.

Shapes: every (width, mlp, layers) of the space the prune step accepts (compress/pruning/shapes.py),
deduplicated by the shape they make. Precisions per shape: every uniform (method, bits, group, head)
whose group sizes divide the shape's widths (the quantize step's own check, QuantizeConfig.bad_groups),
and, with `mixed`, points of a greedy knapsack path: from all matrices at the lowest bits, upgrade the
matrix with the most KL saved per byte added, until max_mb (llama.cpp --target-bpw / Model Optimizer
auto_quantize in miniature). The predicted quality is additive: the shape's unhealed prune KL times
HEAL (distillation recovers most of it) plus the sum of the matrices' quantization KL.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from compress.model_shape import Shape
from compress.pruning.config import PruneConfig
from compress.pruning.shapes import target_problems, target_shape
from compress.quantization.config import QuantizeConfig, layer_widths
from compress.search.config import MB, SearchConfig, SearchSpace
from compress.search.profiles import precision_key
from compress.search.sizing import HEAD, matrices, matrix_bytes, projected_tokens_per_s, weight_bytes

HEAL = 0.1  # fraction of an unhealed prune KL assumed left after distillation (a ranking prior only)
HEAD_BITS = {"keep": 16, "int8": 8, "int4": 4}
MIXED_POINTS = 3  # knapsack-path points per (shape, method, group): the budget's edge and two below


@dataclass(frozen=True)
class Candidate:
    shape_key: str  # "w0.33-m0-l0"
    shape: Shape
    prune: dict[str, Any] | None  # the prune step's config, None: unpruned
    quantize: dict[str, Any]  # the quantize step's config, as the plan writes it
    bytes: int
    tokens_per_s: float  # projected on the search target
    predicted_kl: float
    label: str = field(default="")

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "shape": str(self.shape), "shape_key": self.shape_key,
                "predicted_mb": self.bytes / MB, "projected_tokens_per_s": self.tokens_per_s,
                "predicted_kl": self.predicted_kl, "prune": self.prune, "quantize": self.quantize}


def shape_key(cfg: PruneConfig) -> str:
    return f"w{cfg.width:g}-m{cfg.mlp:g}-l{cfg.layers}"


def prune_configs(base: Shape, space: SearchSpace) -> dict[str, PruneConfig]:
    """{shape key: prune config} of every grid point the prune step can apply, one per distinct shape."""
    out: dict[str, PruneConfig] = {}
    seen: set[Shape] = set()
    p = space.prune
    for width, mlp, layers in itertools.product(p.width, p.mlp, p.layers):
        cfg = PruneConfig(importance=p.importance, width=width, mlp=mlp, layers=layers)
        if target_problems(base, cfg):
            continue
        shape = target_shape(base, cfg)
        if shape not in seen:
            seen.add(shape)
            out[shape_key(cfg)] = cfg
    return out


def _quant_kl(profile: dict[str, dict[str, float]], shape: Shape, q: QuantizeConfig) -> float:
    """The sum of the matrices' profiled KL at their precision (float: 0)."""
    total = 0.0
    for name in matrices(shape):
        bits, group = q.precision_of(name)
        if bits < 16:
            total += profile.get(name, {}).get(precision_key(bits, group), 0.0)
    return total


def _candidate(base_prune_kl: float, profile, shape: Shape, key: str, prune: PruneConfig, conf: dict,
               cfg: SearchConfig, label: str) -> Candidate:
    q = QuantizeConfig(**conf)
    return Candidate(key, shape, None if prune.prunes_nothing() else prune.model_dump(exclude_defaults=True),
                     conf, weight_bytes(shape, q), projected_tokens_per_s(shape, q, cfg.target, cfg.context),
                     HEAL * base_prune_kl + _quant_kl(profile, shape, q), label)


def uniform(shape: Shape, space: SearchSpace) -> list[dict[str, Any]]:
    """The quantize config of every uniform variant whose group sizes divide the shape's widths."""
    q = space.quantize
    out = []
    for method, bits, group, head in itertools.product(q.methods, q.bits, q.group_sizes, q.lm_head):
        conf = {"method": method, "bits": bits, "group_size": group, "lm_head": head, "calib_samples": q.calib_samples}
        if not QuantizeConfig(**conf).bad_groups(layer_widths(shape.n_embd, shape.n_inner)):
            out.append(conf)
    return out


def knapsack_path(profile: dict[str, dict[str, float]], shape: Shape, group: int, head_levels: list[int],
                  room: float | None = None, levels: tuple[int, ...] = (4, 8, 16)) -> list[dict[str, int]]:
    """Greedy path from every matrix at its lowest bits: each step upgrades the one matrix (to any higher
    level) with the most KL saved per byte added, among the upgrades that fit in `room` bytes more than
    the start (None: no limit). Assignments {module: bits} in order of growing size."""
    mats = matrices(shape)
    options = {n: (sorted(head_levels) if n == HEAD else list(levels)) for n in mats}
    current = {n: options[n][0] for n in mats}

    def kl(n: str, b: int) -> float:
        return 0.0 if b >= 16 else profile.get(n, {}).get(precision_key(b, group), 0.0)

    def size(n: str, b: int) -> int:
        return matrix_bytes(*mats[n], b, group)

    path, spent = [current.copy()], 0
    while True:
        best, best_ratio = None, -1.0
        for n, b in current.items():
            for nb in (x for x in options[n] if x > b):
                gain, cost = kl(n, b) - kl(n, nb), size(n, nb) - size(n, b)
                if room is not None and spent + cost > room:
                    continue  # a big upgrade (the head) must not end the path: smaller ones may still fit
                ratio = gain / max(cost, 1)
                if gain > 0 and ratio > best_ratio:
                    best, best_ratio = (n, nb), ratio
        if best is None:
            break
        spent += size(best[0], best[1]) - size(best[0], current[best[0]])
        current[best[0]] = best[1]
        path.append(current.copy())
    return path


def mixed_config(method: str, assign: dict[str, int], group: int, calib_samples: int) -> dict[str, Any]:
    """An assignment as a quantize config: 4 bits, the head at its level, an override per other matrix."""
    head = {16: "keep", 8: "int8", 4: "int4"}[assign[HEAD]]
    conf = {"method": method, "bits": 4, "group_size": group, "lm_head": head, "calib_samples": calib_samples}
    body = sorted((n, b) for n, b in assign.items() if n != HEAD and b != 4)
    if body:
        conf["overrides"] = {n: {"bits": b} for n, b in body}
    return conf


def _mixed_points(confs: list[dict[str, Any]], shape: Shape, max_bytes: float | None) -> list[dict[str, Any]]:
    """Up to MIXED_POINTS configs of the path within max_bytes: the largest and evenly spaced smaller ones
    (the path's first point, all at the lowest bits, is a uniform variant already)."""
    fits = [c for c in confs[1:] if max_bytes is None or weight_bytes(shape, QuantizeConfig(**c)) <= max_bytes]
    if len(fits) <= 1:
        return fits
    picks = {len(fits) - 1 - round(k * (len(fits) - 1) / MIXED_POINTS) for k in range(MIXED_POINTS)}
    return [fits[i] for i in sorted(picks)]


def candidates(base: Shape, cfg: SearchConfig, profile: dict[str, Any]) -> list[Candidate]:
    """Every candidate of the space, with exact size, projected speed and predicted KL."""
    space = cfg.search_space
    quant_profile, prune_kl = profile["quant"], profile["prune"]
    max_bytes = cfg.budget.max_mb * MB if cfg.budget.max_mb else None
    out: list[Candidate] = []
    for key, prune in prune_configs(base, space).items():
        shape = target_shape(base, prune)
        for conf in uniform(shape, space):
            label = f"{key} {conf['method']} w{conf['bits']}g{conf['group_size']} head {conf['lm_head']}"
            out.append(_candidate(prune_kl.get(key, 0.0), quant_profile, shape, key, prune, conf, cfg, label))
        if not space.quantize.mixed:
            continue
        heads = [HEAD_BITS[h] for h in space.quantize.lm_head]
        for method, group in itertools.product(space.quantize.methods, space.quantize.group_sizes):
            if any(w % group for w in layer_widths(shape.n_embd, shape.n_inner).values()):
                continue
            start = mixed_config(method, {n: 4 for n in matrices(shape)} | {HEAD: min(heads)}, group, 1)
            room = None if max_bytes is None else max_bytes - weight_bytes(shape, QuantizeConfig(**start))
            path = [mixed_config(method, a, group, space.quantize.calib_samples)
                    for a in knapsack_path(quant_profile, shape, group, heads, room)]
            for conf in _mixed_points(path, shape, max_bytes):
                label = (f"{key} {method} mixed g{group} ({len(conf.get('overrides', {}))} overrides, "
                         f"head {conf['lm_head']})")
                out.append(_candidate(prune_kl.get(key, 0.0), quant_profile, shape, key, prune, conf, cfg, label))
    unique = {(c.shape_key, json.dumps(c.quantize, sort_keys=True)): c for c in reversed(out)}  # first one wins
    return [c for c in out if unique[(c.shape_key, json.dumps(c.quantize, sort_keys=True))] is c]


def violation(c: Candidate, cfg: SearchConfig) -> float:
    """How far a candidate's predicted size and projected speed are outside the budget (0: inside)."""
    b = cfg.budget
    v = 0.0
    if b.max_mb:
        v += max(0.0, c.bytes / (b.max_mb * MB) - 1)
    if b.min_tokens_per_s:
        v += max(0.0, 1 - c.tokens_per_s / b.min_tokens_per_s)
    return v


def objective_key(cfg: SearchConfig):
    """Sort key of candidates by the objective (predicted values), smaller first."""
    ratio_cap = math.log(cfg.budget.max_ppl_ratio) if cfg.budget.max_ppl_ratio else math.inf
    return {"ppl": lambda c: (c.predicted_kl, c.bytes),
            "size": lambda c: (c.predicted_kl > ratio_cap, c.bytes),
            "latency": lambda c: (c.predicted_kl > ratio_cap, -c.tokens_per_s)}[cfg.objective]


def choose(all_candidates: list[Candidate], cfg: SearchConfig) -> tuple[list[Candidate], list[Candidate]]:
    """(the max_trials best candidates inside the predicted budget, the closest ones outside it)."""
    inside = sorted((c for c in all_candidates if violation(c, cfg) == 0), key=objective_key(cfg))
    outside = sorted((c for c in all_candidates if violation(c, cfg) > 0), key=lambda c: violation(c, cfg))
    return inside[:cfg.max_trials], outside[:3]
