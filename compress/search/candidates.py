"""Stage 2: candidate plans from the profiles, with exact size and projected speed, none of them run.

Shapes: every (width, mlp, layers) of the space the prune step accepts (compress/pruning/shapes.py),
deduplicated by the shape they make. Precisions per shape: every uniform (method, bits, group, head)
whose group sizes divide the shape's widths (the quantize step's own check, QuantizeConfig.bad_groups),
and, with `mixed`, per-matrix (bits, group) assignments: for the budget's edge and for the size of
every uniform variant, the assignment of least summed KL within that many bytes (an exact
multiple-choice knapsack; Model Optimizer's auto_quantize and llama.cpp's --target-bpw solve the same
problem). The predicted quality is additive: the shape's unhealed prune KL times HEAL (distillation
recovers most of it) plus the sum of the matrices' quantization KL.

Low-rank (`space.factorize`): per shape and low-rank budget that stage 1 could apply, every uniform
variant whose method quantizes factors (the quantize step's own factor_problem; rank_multiple makes
every group divide every rank), sized exactly from the ranks stage 1 recorded, its predicted KL HEAL x
the unhealed KL of the pruned and factorized model + the KL all its factors quantized at the variant's
precision added in stage 1 + the profiled KL of the matrices left dense (the head, projections not
factorized). Uniform precision only: the quantize step refuses overrides after factorize.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Collection

import numpy as np

from compress.model_shape import Shape
from compress.pruning.config import PruneConfig
from compress.pruning.shapes import target_problems, target_shape
from compress.quantization.config import QuantizeConfig, layer_widths
from compress.quantization.module_precision import FLOAT_BITS, precision_label
from compress.search.config import MB, SearchConfig, SearchSpace
from compress.search.profiles import level_kl, precision_key
from compress.search.sizing import HEAD, artifact_bytes, matrices, matrix_bytes, projected_tokens_per_s

HEAL = 0.1  # fraction of an unhealed prune KL assumed left after distillation (a ranking prior only)
HEAD_BITS = {"keep": 16, "int8": 8, "int4": 4}


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
    factorize: dict[str, Any] | None = None  # the factorize step's config, None: dense
    ranks: dict[str, int] | None = None  # {"h.<i>.<proj>": rank} stage 1 saw that config choose

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "shape": str(self.shape), "shape_key": self.shape_key,
                "predicted_mb": self.bytes / MB, "projected_tokens_per_s": self.tokens_per_s,
                "predicted_kl": self.predicted_kl, "prune": self.prune, "factorize": self.factorize,
                "factorize_ranks": self.ranks, "quantize": self.quantize}

    def identity(self) -> str:
        """What makes two candidates the same plan."""
        return json.dumps([self.shape_key, self.factorize, self.quantize], sort_keys=True)


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


def _quant_kl(profile: dict[str, dict[str, float]], shape: Shape, q: QuantizeConfig,
              factorized: Collection[str] = ()) -> float:
    """The sum of the matrices' profiled values at their precision (profiles.level_kl), but for the
    `factorized` ones."""
    total = 0.0
    for name in matrices(shape):
        if name in factorized:
            continue
        total += level_kl(profile, name, *q.precision_of(name))
    return total


def _candidate(base_prune_kl: float, profile, shape: Shape, key: str, prune: PruneConfig, conf: dict,
               cfg: SearchConfig, label: str) -> Candidate:
    q = QuantizeConfig(**conf)
    return Candidate(key, shape, None if prune.prunes_nothing() else prune.model_dump(exclude_defaults=True),
                     conf, artifact_bytes(shape, q, cfg.search_space.export),
                     projected_tokens_per_s(shape, q, cfg.target, cfg.context),
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


Level = tuple[int, "int | None"]  # (bits, input channels per scale); (16, None): float


def matrix_levels(shape: Shape, bits: list[int], groups: list[int], head_bits: list[int]) -> dict[str, list[Level]]:
    """Every (bits, group) each matrix may take, cheapest first: the space's bits at each group that divides
    the matrix's input width (per-channel when none does), float at 16; the head at its allowed bits."""
    out = {}
    for name, (out_f, in_f) in matrices(shape).items():
        allowed = sorted(set(head_bits if name == HEAD else [*bits, FLOAT_BITS]))
        levels: list[Level] = []
        for b in allowed:
            fitting = [g for g in groups if in_f % g == 0] or [None]
            levels += [(b, None)] if b >= FLOAT_BITS else [(b, g) for g in fitting]
        out[name] = sorted(set(levels), key=lambda lv: (matrix_bytes(out_f, in_f, *lv), -lv[0]))
    return out


KNAPSACK_UNITS = 4096  # byte resolution of the knapsack: the room is split into this many units at most


def knapsack(profile: dict[str, dict[str, float]], shape: Shape, levels: dict[str, list[Level]],
             room: float) -> dict[str, Level]:
    """The assignment {module: level} of least summed KL whose bytes exceed the all-cheapest start by at
    most `room`: a multiple-choice knapsack solved exactly by dynamic programming over bytes (each move's
    cost rounded up to room / KNAPSACK_UNITS, so the sum never exceeds the room). Exact, unlike a greedy
    KL-per-byte path, which skips a matrix's intermediate levels (the head's g64 between g128 and g32)
    and leaves no point between two large moves."""
    mats = matrices(shape)
    unit = max(1.0, room / KNAPSACK_UNITS)
    cap = int(room // unit)

    best = np.zeros(cap + 1)  # least KL (of the matrices so far) with at most c units spent
    choices = []
    for n in mats:
        base = matrix_bytes(*mats[n], *levels[n][0])
        costs = [math.ceil((matrix_bytes(*mats[n], *lv) - base) / unit) for lv in levels[n]]
        table = np.full((len(costs), cap + 1), np.inf)
        for i, (lv, c) in enumerate(zip(levels[n], costs)):
            if c <= cap:
                table[i, c:] = best[:cap + 1 - c] + level_kl(profile, n, *lv)
        choice = table.argmin(axis=0)
        best = table[choice, np.arange(cap + 1)]
        choices.append((n, costs, choice))
    assign, c = {}, cap
    for n, costs, choice in reversed(choices):
        i = int(choice[c])
        assign[n] = levels[n][i]
        c -= costs[i]
    return {n: assign[n] for n in mats}


def mixed_config(method: str, assign: dict[str, Level], calib_samples: int) -> dict[str, Any]:
    """An assignment as a quantize config: the body's most common level step-wide, an override for every
    other matrix; the head by `lm_head` when it has the step's group, else by an override of its own."""
    body = [lv for n, lv in assign.items() if n != HEAD and lv[0] < FLOAT_BITS]
    bits, group = max(set(body), key=body.count) if body else (4, None)
    head = assign[HEAD]
    head_by_key = head[0] >= FLOAT_BITS or head[1] == group
    conf = {"method": method, "bits": bits, "group_size": group or "per-channel",
            "lm_head": {FLOAT_BITS: "keep", 8: "int8", 4: "int4"}[head[0]] if head_by_key else "keep",
            "calib_samples": calib_samples}
    overrides = {n: _precision(lv) for n, lv in sorted(assign.items())
                 if (n != HEAD and lv != (bits, group)) or (n == HEAD and not head_by_key)}
    if overrides:
        conf["overrides"] = overrides
    return conf


def _precision(lv: Level) -> dict[str, Any]:
    bits, group = lv
    return {"bits": bits} if bits >= FLOAT_BITS else {"bits": bits, "group_size": group or "per-channel"}


def candidates(base: Shape, cfg: SearchConfig, profile: dict[str, Any]) -> list[Candidate]:
    """Every candidate of the space, with exact size, projected speed and predicted KL."""
    space = cfg.search_space
    quant_profile, prune_kl = profile["quant"], profile["prune"]
    max_bytes = cfg.budget.max_mb * MB if cfg.budget.max_mb else None
    out: list[Candidate] = []
    for key, prune in prune_configs(base, space).items():
        shape = target_shape(base, prune)
        for conf in uniform(shape, space):
            label = f"{key} {_uniform_label(conf)}"
            out.append(_candidate(prune_kl.get(key, 0.0), quant_profile, shape, key, prune, conf, cfg, label))
        if not space.quantize.mixed:
            continue
        q = space.quantize
        levels = matrix_levels(shape, sorted({*q.bits, 4, 8}), q.group_sizes, [HEAD_BITS[h] for h in q.lm_head])
        start = {n: lv[0] for n, lv in levels.items()}
        start_bytes = artifact_bytes(shape, QuantizeConfig(**mixed_config(q.methods[0], start, 1)), space.export)
        for method in q.methods:
            # the budget's edge, and each uniform variant's size (the same-size comparison)
            sizes = {c.bytes for c in out if c.shape_key == key and c.quantize["method"] == method}
            sizes = sorted({s for s in sizes if max_bytes is None or s <= max_bytes} | ({max_bytes} if max_bytes else set()))
            for limit in (x for x in sizes if x >= start_bytes):
                assign = knapsack(quant_profile, shape, levels, limit - start_bytes)
                conf = mixed_config(method, assign, q.calib_samples)
                if "overrides" not in conf and assign == start:
                    continue  # nothing fits beside the start: that is a uniform variant already
                label = f"{key} {method} mixed ({len(conf.get('overrides', {}))} overrides, {_describe(conf)})"
                out.append(_candidate(prune_kl.get(key, 0.0), quant_profile, shape, key, prune, conf, cfg, label))
    out += factorized_candidates(base, cfg, profile)
    unique = {c.identity(): c for c in reversed(out)}  # first one wins
    return [c for c in out if unique[c.identity()] is c]


def _uniform_label(conf: dict[str, Any]) -> str:
    return f"{conf['method']} w{conf['bits']}g{conf['group_size']} head {conf['lm_head']}"


def factorized_candidates(base: Shape, cfg: SearchConfig, profile: dict[str, Any]) -> list[Candidate]:
    """Every (shape, low-rank budget stage 1 applied, uniform variant that quantizes its factors) (module doc)."""
    space = cfg.search_space
    settings = space.factorize_settings()
    out = []
    for key, prune in prune_configs(base, space).items():
        shape = target_shape(base, prune)
        made: list[dict[str, int]] = []
        for fkey, seen in profile.get("factorize", {}).get(key, {}).items():
            if "ranks" not in seen or fkey not in settings or seen["ranks"] in made:
                continue  # skipped at this shape (its reason is in the profile), or the same model as a budget before
            ranks = seen["ranks"]
            made.append(ranks)
            block = next(iter(ranks))  # every factor takes the step-wide precision
            for conf in uniform(shape, space):
                q = QuantizeConfig(**conf)
                if q.factor_problem("factorize", list(ranks.values())):
                    continue
                pruned = None if prune.prunes_nothing() else prune.model_dump(exclude_defaults=True)
                out.append(Candidate(key, shape, pruned, conf, artifact_bytes(shape, q, space.export, ranks),
                                     projected_tokens_per_s(shape, q, cfg.target, cfg.context, ranks),
                                     HEAL * seen["kl"] + seen["quant"][precision_key(*q.precision_of(block))]
                                     + _quant_kl(profile["quant"], shape, q, factorized=ranks),
                                     f"{key} {fkey} {_uniform_label(conf)}", settings[fkey], ranks))
    return out


def unfit_factorize(base: Shape, space: SearchSpace) -> str | None:
    """One line naming a low-rank budget of the space that fits no shape of it (rank_multiple, the largest
    group size, not below some projection's break-even rank at every shape), with the fix; None: all fit."""
    from compress.lowrank.config import FactorizeConfig, projection_shapes

    shapes = [target_shape(base, p) for p in prune_configs(base, space).values()]
    for fkey, setting in space.factorize_settings().items():
        cfg = FactorizeConfig(**setting)
        problems = [cfg.rank_problem(projection_shapes(s.n_embd, s.n_inner)) for s in shapes]
        if shapes and all(problems):
            return (f"search.space.factorize: {fkey} fits no shape of the space: {problems[0]} (rank_multiple is "
                    f"the largest of search.space.quantize.group_sizes: use smaller group sizes, or name fewer "
                    f"search.space.factorize.layers)")
    return None


def _describe(conf: dict[str, Any]) -> str:
    """'int4 g128, head int4 g32': the step-wide precision, then the head's."""
    q = QuantizeConfig(**conf)
    body = precision_label(q.weight_bits, q.group_for(q.weight_bits))
    return f"{body}, head {precision_label(*q.precision_of(HEAD))}"


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
