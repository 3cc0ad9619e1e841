"""Low-rank factorization on tiny models: exact at full rank, budgets met, whitening beating plain SVD
on calibration-like inputs, exact reload, and stock transformers refusing the checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.errors import UserError
from compress.lowrank.api import factorize
from compress.lowrank.config import FactorizeConfig
from compress.lowrank.methods import METHODS
from compress.lowrank.modules import LowRankLinear
from compress.lowrank.ranks import break_even, budget_ranks, max_rank
from compress.models import load_model, save_model
from compress.quantization.calibration import input_hooks, run_model
from compress.quantization.gptq import HessianSum
from compress.quantization.modules import linear_weight
from tests.tiny_models import tiny_model


def calib_ids(n: int = 4096, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def hessians(model, names):
    hs = HessianSum()
    with input_hooks({n: model.get_submodule(n) for n in names}, hs.add):
        run_model(model, calib_ids(1024).view(16, 64))
    return hs


@pytest.mark.parametrize("method", sorted(METHODS))
def test_full_rank_reconstructs_the_matrix_exactly(method):
    model = tiny_model(seed=0)
    names = ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    hs = hessians(model, names)
    cfg = FactorizeConfig(method=method, rank=1)
    for name in names:
        w, bias = linear_weight(model.get_submodule(name))
        sp = METHODS[method].decompose(name, w, hs.get(name), cfg)
        first, second = sp.factors(min(w.shape))
        layer = LowRankLinear.of(first.float(), second.float(), bias)
        assert torch.allclose(layer.dense(), w, atol=1e-5), name
        x = torch.randn(3, w.shape[1])
        assert torch.allclose(layer(x), model.get_submodule(name)(x), atol=1e-4)


def test_break_even_and_budget():
    assert break_even(64, 192) == 48.0 and max_rank(64, 192) == 47 and max_rank(64, 64) == 31
    steep, flat = 0.5 ** torch.arange(64.0), torch.ones(64)
    ranks = budget_ranks({"a": (steep, 64, 64), "b": (flat, 64, 64)}, 0.3)
    assert (ranks["a"] + ranks["b"]) * 128 <= 0.3 * 2 * 64 * 64 < (ranks["a"] + ranks["b"] + 1) * 128
    # a's energy is in its first few values, b's is spread: after a's first ranks, b's buy more
    assert ranks["a"] <= 4 and ranks["b"] >= 14


@pytest.mark.parametrize("budget", [{"params": 0.5}, {"params": 0.8}, {"energy": 0.9}, {"rank": 20}])
def test_budget_is_met_and_every_rank_is_below_break_even(budget):
    model = tiny_model(seed=1)
    layers = factorize(model, FactorizeConfig(method="whiten", calib_tokens=1024, seq_len=64, **budget), calib_ids())
    assert len(layers) == 8
    for name, v in layers.items():
        m, n = v["shape"]
        assert 1 <= v["rank"] <= max_rank(m, n) < break_even(m, n), name
        assert isinstance(model.get_submodule(name), LowRankLinear)
    dense = sum(m * n for m, n in (v["shape"] for v in layers.values()))
    kept = sum(v["rank"] * sum(v["shape"]) for v in layers.values())
    if "params" in budget:
        assert budget["params"] - 0.02 < kept / dense <= budget["params"]
    if "energy" in budget:
        assert all(v["energy_kept"] >= 0.9 or v["rank"] == v["max_rank"] for v in layers.values())
    if "rank" in budget:
        assert {v["rank"] for v in layers.values()} == {20}


def output_error(model, reference, ids) -> float:
    with torch.no_grad():
        a, b = model(ids).logits, reference(ids).logits
    return float((a - b).pow(2).mean() / b.pow(2).mean())


@pytest.mark.parametrize("budget", [{"rank": 16}, {"params": 0.5}])
def test_whitening_beats_plain_svd_on_calibration_like_inputs(budget):
    dense = tiny_model(seed=2)
    test_ids = calib_ids(4 * 64, seed=9).view(4, 64)
    err = {}
    for method in ("svd", "whiten"):
        model = copy.deepcopy(dense)
        factorize(model, FactorizeConfig(method=method, calib_tokens=2048, seq_len=64, **budget), calib_ids())
        err[method] = output_error(model, dense, test_ids)
    assert err["whiten"] < 0.8 * err["svd"], err


def test_reload_is_exact_and_stock_transformers_refuses(tmp_path):
    from transformers import GPT2LMHeadModel

    model = tiny_model(seed=3)
    factorize(model, FactorizeConfig(method="svd", params=0.6), None)
    path = save_model(model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert set(config["gpt2_edge"]["lowrank"]["ranks"]) == {f"transformer.h.{i}.{p}" for i in range(2) for p in
                                                          ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    again = load_model(path)
    ids = calib_ids(64).view(1, 64)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.lm_head.weight is again.transformer.wte.weight  # still tied
    with pytest.raises(Exception, match="size mismatch|ignore_mismatched_sizes"):
        GPT2LMHeadModel.from_pretrained(path)


def test_runtime_refusals():
    with pytest.raises(UserError, match="whiten needs calibration token ids"):
        factorize(tiny_model(), FactorizeConfig(method="whiten", rank=8), None)
    model = tiny_model()
    factorize(model, FactorizeConfig(method="svd", rank=8), None)
    with pytest.raises(UserError, match="already factorized"):
        factorize(model, FactorizeConfig(method="svd", rank=8), None)
    from compress.quantization.api import quantize
    from compress.quantization.config import QuantizeConfig

    with pytest.raises(UserError, match="group_size 32 does not divide rank 8 of the factors"):
        quantize(model, QuantizeConfig(method="rtn", bits=4, group_size=32), None)  # (test_quantize_factors.py)
