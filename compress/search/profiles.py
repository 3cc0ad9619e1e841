"""Stage 1: sensitivity profiles of the base model on calibration windows of data.train.

- quantization: every quantizable matrix (h.<i>.<proj>, lm_head) fake-quantized alone at every
  (bits, group) of the space, with the quantize step's own code: GPTQ (compress/quantization/gptq.py,
  on the float model's input Hessians from `hessian_windows` windows; `profile.proxy: gptq`, the
  default) or round-to-nearest (`proxy: rtn`). Its cost is KL(float || quantized) of the next-token
  distributions, in nats per token. GPTQ's errors are not RTN's scaled down: it compensates a coarse
  grid better than it gains from 8 bits, so the RTN proxy ranked mixed assignments wrong for GPTQ
  trials (bench/results/2026-12-07-search.md). While one matrix is measured the others sit at their
  cheapest precision (`profile.baseline: cheapest`, the knapsack's start; or float): its value is its
  share of the start's KL plus what its precision (float included) changes from there.
- pruning: every shape of the space pruned with the prune step's own code (compress/pruning), no
  healing, same KL. It ranks shapes; distillation recovers most of it (trials measure how much).
- low-rank (with `space.factorize`): every pruned shape factorized at every budget of the space by the
  factorize step's own code (compress/lowrank), unhealed, same KL (of the pruned and factorized model:
  prune and factorize together), and the ranks it chose per matrix. The step calibrates on data.train
  as it does in a trial (its calib_tokens, seed, windows), so the trial's factorize step chooses these
  same ranks and stage 2 sizes its candidates exactly from them. Then, at every (bits, group), all the
  factors quantized at once by the profile's proxy (GPTQ on each factor's own input Hessian through the
  factorized model, or rtn; each factor's input width grouped as the quantize step groups it), the KL
  added to the factorized model's: the factors' quantization error, measured, because the
  dense matrices' profile underestimates it several times over (on the reference teacher, int4 g128
  cost a whiten-e0.97 model 2.6% ppl against 0.4% for the dense one). Factorized candidates are
  uniform-precision, so the joint number is the one they need.

A profile is a JSON file in the search directory named by the hash of everything it depends on (the
base model's step hash, the train text, the settings, the grid, the low-rank budgets): a resumed search
reads it back.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from compress.hashing import digest
from compress.pruning.api import prune
from compress.pruning.config import PruneConfig
from compress.quantization.calibration import input_hooks
from compress.quantization.gptq import HessianSum, gptq
from compress.quantization.handoff import LinearCodes
from compress.quantization.rtn import rtn
from compress.run_dir import read_json, write_json
from compress.search.sizing import HEAD
from compress.training import sample_batch

log = logging.getLogger(__name__)
BATCH = 4  # calibration windows per forward pass
VERSION = 6  # of the profile's numbers: part of its cache key (4: low-rank profiles)


class Calibration:
    """The float model's next-token log-probabilities on fixed windows, and KL of another model to them."""

    def __init__(self, model: GPT2LMHeadModel, ids: torch.Tensor, windows: int, seq_len: int, seed: int):
        seq_len = min(seq_len, model.config.n_positions, ids.numel() - 2)
        self.windows = sample_batch(ids.flatten(), windows, seq_len, seed, step=0)[:, :-1]
        # fp32: a bf16 copy alone puts a ~1e-4 nats floor under every KL, the size of an 8-bit matrix's
        self.reference = [self._logprobs(model, w) for w in self.windows.split(BATCH)]

    @staticmethod
    @torch.no_grad()
    def _logprobs(model: GPT2LMHeadModel, windows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(windows).logits.float(), dim=-1)

    @torch.no_grad()
    def kl(self, model: GPT2LMHeadModel) -> float:
        """Mean KL(reference || model) per token, in nats."""
        total, n = 0.0, 0
        for w, ref in zip(self.windows.split(BATCH), self.reference):
            lp = self._logprobs(model, w)
            total += float((ref.exp() * (ref - lp)).sum())
            n += w.numel()
        return max(total / n, 0.0)


def _module(model: GPT2LMHeadModel, name: str) -> torch.nn.Module:
    return model.lm_head if name == HEAD else model.transformer.get_submodule(name)


def _rtn(name: str, w: torch.Tensor, H: torch.Tensor | None, bits: int, group: int | None) -> LinearCodes:
    return rtn(name, w, None, bits, group, sym=True)


def _gptq(name: str, w: torch.Tensor, H: torch.Tensor | None, bits: int, group: int | None) -> LinearCodes:
    return gptq(name, w, None, H, bits, group, sym=True, damp=0.01, act_order=False)


# profile.proxy -> how one matrix is quantized alone (the quantize step's own code)
PROXIES: dict[str, Callable[..., LinearCodes]] = {"rtn": _rtn, "gptq": _gptq}


def matrix_names(model: GPT2LMHeadModel) -> list[str]:
    return [f"h.{i}.{p}" for i in range(model.config.n_layer)
            for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + [HEAD]


@torch.no_grad()
def input_hessians(model: GPT2LMHeadModel, windows: torch.Tensor) -> HessianSum:
    """H = mean x x^T of every matrix's input under the float model (GPTQ's statistics)."""
    hs = HessianSum()
    with input_hooks({n: _module(model, n) for n in matrix_names(model)}, hs.add):
        for w in windows.split(BATCH):
            model(w)
    return hs


def cheapest(precisions: list[tuple[int, int | None]], width: int) -> tuple[int, int | None]:
    """The fewest-bytes precision of a matrix of this input width: the fewest bits, the largest group
    that divides the width (the knapsack's start, compress/search/candidates.py)."""
    fitting = [p for p in precisions if p[1] is None or width % p[1] == 0]
    return min(fitting or precisions, key=lambda p: (p[0], -(p[1] or width)))  # none fits: per channel


@torch.no_grad()
def quant_profile(model: GPT2LMHeadModel, calib: Calibration, precisions: list[tuple[int, int | None]],
                  proxy: str = "rtn", hessians: HessianSum | None = None,
                  baseline: str = "float") -> dict[str, dict[str, float]]:
    """{module: {"<bits>g<group>": KL}}: one matrix quantized at a time. baseline "float": the others
    float, the value is the KL of that model. baseline "cheapest": the others at their cheapest
    precision (the knapsack's start), the value that matrix's share of the start's KL (1/N of it) plus
    what its precision changes from there, so the values of an assignment sum to the start's KL plus
    each move's measured change (errors that add up through the network are in every change)."""
    quantize_one = PROXIES[proxy]
    names = matrix_names(model)
    originals = {n: _module(model, n).weight.detach().clone() for n in names}

    def quantized(name: str, bits: int, group: int | None) -> torch.Tensor:
        """The matrix's float weight quantized at (bits, group), in the module's own layout."""
        module = _module(model, name)
        w = (originals[name].t() if isinstance(module, Conv1D) else originals[name]).float()  # [out, in]
        g = group if group and w.shape[1] % group == 0 else None
        fake = quantize_one(name, w, hessians.get(name) if hessians is not None else None, bits, g).dequantize()
        return fake.t() if isinstance(module, Conv1D) else fake  # Conv1D stores [in, out]

    rest, start_precision = dict(originals), {}
    if baseline == "cheapest":
        for n in names:
            width = originals[n].shape[0] if isinstance(_module(model, n), Conv1D) else originals[n].shape[1]
            start_precision[n] = cheapest(precisions, width)
            rest[n] = quantized(n, *start_precision[n])
            _module(model, n).weight.copy_(rest[n])
    start = calib.kl(model) if baseline == "cheapest" else 0.0
    share = start / len(names)
    out: dict[str, dict[str, float]] = {}
    try:
        for name in names:
            module = _module(model, name)
            out[name] = {}
            for bits, group in precisions:
                if start_precision.get(name) == (bits, group):
                    out[name][precision_key(bits, group)] = share  # the start itself: measured once, above
                    continue
                module.weight.copy_(quantized(name, bits, group))
                kl = calib.kl(model)
                out[name][precision_key(bits, group)] = kl if baseline == "float" else share + kl - start
                module.weight.copy_(rest[name])
            if baseline == "cheapest":  # kept float, the others at the start (not 0: their errors remain)
                module.weight.copy_(originals[name])
                out[name][FLOAT_KEY] = share + calib.kl(model) - start
                module.weight.copy_(rest[name])
            log.info("search: profile %s: %s", name, ", ".join(f"{k} KL {v:.2e}" for k, v in out[name].items()))
    finally:
        for n in names:
            _module(model, n).weight.copy_(originals[n])
    return out


FLOAT_KEY = "float"  # a matrix kept float (profiled around the cheapest start only; around float it is 0)


def precision_key(bits: int, group: int | None) -> str:
    return FLOAT_KEY if bits >= 16 else f"{bits}g{group or 'row'}"


def level_kl(profile: dict[str, dict[str, float]], name: str, bits: int, group: int | None) -> float:
    """A matrix's profiled value at a precision; float is 0 unless profiled (around the cheapest start)."""
    values = profile.get(name, {})
    return values.get(precision_key(bits, group), 0.0)


def shape_profiles(model: GPT2LMHeadModel, calib: Calibration, configs: dict[str, PruneConfig],
                   train_ids: torch.Tensor, factorize_settings: dict[str, dict[str, Any]],
                   factor_quant: "FactorQuant") -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, float]]:
    """({shape key: KL of the pruned, unhealed model}, {shape key: factorize_profile of it}, CPU seconds
    {"prune", "factorize"})."""
    prune_kl: dict[str, float] = {}
    factorized: dict[str, dict[str, Any]] = {}
    cpu = {"prune": 0.0, "factorize": 0.0}
    for key, cfg in configs.items():
        t0 = time.process_time()
        pruned = model if cfg.prunes_nothing() else prune(model, cfg, train_ids)
        prune_kl[key] = 0.0 if cfg.prunes_nothing() else calib.kl(pruned)
        t1 = time.process_time()
        if factorize_settings:
            factorized[key] = factorize_profile(pruned, calib, factorize_settings, train_ids, factor_quant)
        cpu["prune"] += t1 - t0
        cpu["factorize"] += time.process_time() - t1
    return prune_kl, factorized, cpu


def factorize_profile(model: GPT2LMHeadModel, calib: Calibration, settings: dict[str, dict[str, Any]],
                      train_ids: torch.Tensor, factor_quant: "FactorQuant") -> dict[str, dict[str, Any]]:
    """{setting key: {"kl": KL of a factorized copy of `model`, unhealed, "ranks": {"h.<i>.<proj>": rank},
    "quant": {"<bits>g<group>": KL its factors quantized add}}}, or {"skipped": why} where the setting's ranks
    cannot be below a projection's break-even rank at this shape."""
    from compress.lowrank.api import factorize
    from compress.lowrank.config import FactorizeConfig, projection_shapes

    out: dict[str, dict[str, Any]] = {}
    for fkey, setting in settings.items():
        cfg = FactorizeConfig(**setting)
        bad = cfg.rank_problem(projection_shapes(model.config.n_embd, model.config.n_inner))
        if bad:
            out[fkey] = {"skipped": bad}
            log.info("search: profile factorize %s skipped: %s", fkey, bad)
            continue
        low = copy.deepcopy(model)
        layers = factorize(low, cfg, train_ids)
        ranks = {name.removeprefix("transformer."): v["rank"] for name, v in layers.items()}
        kl = calib.kl(low)
        quant = {k: max(v - kl, 0.0) for k, v in factors_quant_kl(low, calib, factor_quant).items()}
        out[fkey] = {"kl": kl, "ranks": ranks, "quant": quant}
        log.info("search: profile factorize %s: KL %.2e, ranks %d-%d, factors quantized: %s", fkey, kl,
                 min(ranks.values()), max(ranks.values()), ", ".join(f"{k} +{v:.2e}" for k, v in quant.items()))
    return out


@dataclass(frozen=True)
class FactorQuant:
    """How stage 1 quantizes a factorized model's factors: at each of `precisions`, by the profile's proxy
    (GPTQ's Hessians from `hessian_windows` through the factorized model)."""

    precisions: list[tuple[int, int | None]]
    proxy: str
    hessian_windows: torch.Tensor | None


@torch.no_grad()
def factors_quant_kl(model: GPT2LMHeadModel, calib: Calibration, how: FactorQuant) -> dict[str, float]:
    """{"<bits>g<group>": KL of the factorized model (changed in place into factor pairs) with every factor
    quantized at once}, the factors as the quantize step takes them: `down` [r, in], `up` [out, r] (grouped
    along the rank), each quantized by the proxy on its own inputs' Hessian."""
    from compress.lowrank.modules import FACTORS, LowRankPair, as_factor_pairs

    as_factor_pairs(model)
    factors = {f"{n}.{f}": getattr(m, f) for n, m in model.named_modules() if isinstance(m, LowRankPair)
               for f in FACTORS}
    hessians = None
    if how.hessian_windows is not None:
        hessians = HessianSum()
        with input_hooks(factors, hessians.add):
            for w in how.hessian_windows.split(BATCH):
                model(w)
    originals = {n: f.weight.detach().clone() for n, f in factors.items()}
    out = {}
    for bits, group in how.precisions:
        for n, f in factors.items():
            w = originals[n]
            g = group if group and w.shape[1] % group == 0 else None
            f.weight.copy_(PROXIES[how.proxy](n, w, hessians.get(n) if hessians else None, bits, g).dequantize())
        out[precision_key(bits, group)] = calib.kl(model)
        for n, f in factors.items():
            f.weight.copy_(originals[n])
    return out


def profiles(search_dir: Path, key_parts: list[Any], model: GPT2LMHeadModel, train_ids: torch.Tensor,
             settings, precisions: list[tuple[int, int | None]], prune_configs: dict[str, PruneConfig],
             factorize_settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The profiles, read from search_dir when one with the same inputs was made before. factorize_settings:
    {key: factorize step config} (SearchSpace.factorize_settings)."""
    factorize_settings = factorize_settings or {}
    key = digest(VERSION, *key_parts, settings.model_dump(mode="json"), sorted(precisions, key=str),
                 {k: c.model_dump(mode="json") for k, c in prune_configs.items()}, factorize_settings)
    path = search_dir / f"profiles-{key[:16]}.json"
    if path.exists():
        cached = read_json(path)
        if cached.get("key") == key:
            log.info("search: stage 1 profiles reused from %s", path.name)
            return cached | {"reused": True}
    t0 = time.process_time()
    calib = Calibration(model, train_ids, settings.windows, settings.seq_len, settings.seed)
    hessians = windows = None
    if settings.proxy == "gptq":
        seq_len = calib.windows.shape[1]  # within n_positions already
        windows = sample_batch(train_ids.flatten(), settings.hessian_windows, seq_len, settings.seed + 1, step=0)[:, :-1]
        hessians = input_hessians(model, windows)
    quant = quant_profile(model, calib, precisions, settings.proxy, hessians, settings.baseline)
    t1 = time.process_time()
    pruned, factorized, cpu = shape_profiles(model, calib, prune_configs, train_ids, factorize_settings,
                                             FactorQuant(precisions, settings.proxy, windows))
    result = {"key": key, "quant": quant, "prune": pruned, "factorize": factorized,
              "tokens": int(calib.windows.numel()), "cpu_s": {"quant": t1 - t0, **cpu}}
    write_json(path, result)
    return result | {"reused": False}
