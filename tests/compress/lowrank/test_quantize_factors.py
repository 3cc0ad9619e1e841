"""Quantizing a factorized model: each factor a projection of its own (rtn, gptq), group sizes checked
against the ranks (at plan time when the rank is known, when the model loads otherwise), the quantized
factors saved and reloaded exactly (stock transformers refuses the directory), rank_multiple."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.errors import PlanError, UserError
from compress.lowrank.api import factorize
from compress.lowrank.config import FactorizeConfig
from compress.lowrank.modules import LowRankPair, lowrank_record
from compress.models import load_model, save_model
from compress.plan import parse_plan
from compress.quantization import QuantizeConfig, quantize
from compress.quantization.modules import QuantLinear, block_linear_names
from tests.tiny_models import tiny_model

MLP = ("mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def factorized():
    model = tiny_model(seed=0)
    factorize(model, FactorizeConfig(method="svd", rank=32, layers=MLP))
    return model


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_each_factor_is_quantized_and_reloads_exactly(tmp_path, factorized, method):
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = factorized(x).logits
    q = quantize(copy.deepcopy(factorized), QuantizeConfig(method=method, bits=4, group_size=32, calib_samples=4,
                                                           calib_seq_len=64), torch.randint(0, 256, (2048,)))
    names = block_linear_names(q)
    assert "transformer.h.0.mlp.c_fc.down" in names and "transformer.h.1.mlp.c_proj.up" in names
    assert "transformer.h.0.attn.c_attn" in names  # not factorized: quantized as a dense projection
    pair = q.transformer.h[0].mlp.c_fc
    assert isinstance(pair, LowRankPair) and isinstance(pair.down, QuantLinear) and isinstance(pair.up, QuantLinear)
    assert (pair.down.in_features, pair.down.out_features, pair.up.in_features) == (64, 32, 32)
    with torch.no_grad():
        out = q(x).logits
    assert 0 < float((out - ref).abs().max()) < 0.5  # quantized (not bit-equal), yet the same function
    save_model(q, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["format"] == "gpt2-edge-lowrank-factors"
    assert lowrank_record(config)["ranks"]["transformer.h.0.mlp.c_fc"] == 32
    back = load_model(tmp_path)
    assert torch.equal(back(x).logits, out)
    assert torch.equal(back.transformer.h[1].mlp.c_proj.up.q, q.transformer.h[1].mlp.c_proj.up.q)


def test_stock_transformers_refuses_the_quantized_factors(tmp_path, factorized):
    from transformers import AutoModelForCausalLM

    save_model(quantize(copy.deepcopy(factorized), QuantizeConfig(method="rtn", bits=4, group_size=32)), tmp_path)
    with pytest.raises(Exception, match="gpt2-edge-lowrank-factors|format"):  # never random dense layers
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_a_group_that_does_not_divide_a_rank_is_refused_with_the_fix(factorized):
    model = tiny_model(seed=0)
    factorize(model, FactorizeConfig(method="svd", rank=24, layers=MLP))
    with pytest.raises(UserError, match=r"group_size 32 does not divide rank 24 .*second factor.*"
                                        r"use group_size per-channel, or factorize with rank_multiple: 32"):
        quantize(model, QuantizeConfig(method="rtn", bits=4, group_size=32))
    q = quantize(model, QuantizeConfig(method="rtn", bits=4, group_size="per-channel"))
    assert q.transformer.h[0].mlp.c_fc.up.group_size == 24


def test_methods_without_factor_support_are_refused(factorized):
    with pytest.raises(UserError, match=r"smoothquant takes dense projections .* rtn/gptq quantize each factor"):
        quantize(copy.deepcopy(factorized), QuantizeConfig(method="smoothquant"), torch.randint(0, 256, (2048,)))


def _plan(random_tiny_dir, factorize_body, quantize_body):
    from tests.conftest import text_plan

    return parse_plan(text_plan(random_tiny_dir, [{"factorize": factorize_body}, {"quantize": quantize_body}]))


@pytest.mark.parametrize("fact,quant,message", [
    ({"rank": 24, "layers": list(MLP)}, {"bits": 4, "group_size": 32},
     r"steps\[1\]\.quantize\.group_size: group_size 32 does not divide rank 24 of the factors steps\[0\]\.factorize "
     r"made .* use group_size per-channel, or factorize with rank_multiple: 32"),
    ({"rank": 8}, {"method": "smoothquant"},
     r"steps\[1\]\.quantize\.method: smoothquant takes dense projections and steps\[0\]\.factorize made low-rank"),
    ({"rank": 32}, {"bits": 4, "group_size": 32, "overrides": {"h.0.*": {"bits": 8}}},
     r"steps\[1\]\.quantize\.overrides: overrides name dense projections and steps\[0\]\.factorize made low-rank"),
])
def test_plan_time_refusals(random_tiny_dir, fact, quant, message):
    with pytest.raises(PlanError, match=message):
        _plan(random_tiny_dir, {"method": "svd", **fact}, quant)


def test_plan_time_acceptance(random_tiny_dir):
    _plan(random_tiny_dir, {"method": "svd", "rank": 32, "layers": list(MLP)}, {"bits": 4, "group_size": 32})
    _plan(random_tiny_dir, {"method": "svd", "rank": 8}, {"bits": 8})  # per-channel at 8 bits
    _plan(random_tiny_dir, {"method": "svd", "params": 0.7, "rank_multiple": 32, "layers": list(MLP)},
          {"bits": 4, "group_size": 32})
    with pytest.raises(PlanError, match=r"factorize\.rank_multiple: rank_multiple 32 is not below the break-even "
                                        r"rank of attn\.c_proj \[64, 64\]"):
        _plan(random_tiny_dir, {"method": "svd", "params": 0.5, "rank_multiple": 32}, {"bits": 4, "group_size": 32})


def test_rank_multiple_rounds_every_budget_rank():
    for budget in ({"params": 0.6}, {"energy": 0.9}):
        model = tiny_model(seed=1)
        layers = factorize(model, FactorizeConfig(method="svd", rank_multiple=16, **budget))
        ranks = [v["rank"] for v in layers.values()]
        assert all(r % 16 == 0 and 16 <= r < v["max_rank"] + 1 for r, v in zip(ranks, layers.values())), ranks
    with pytest.raises(ValueError, match="rank 20 is not a multiple of rank_multiple 16"):
        FactorizeConfig(rank=20, rank_multiple=16)


def test_tensorrt_pattern_check_takes_factors(factorized):
    """The TensorRT export asks model_pattern whether to enable sparse weights: a factorized model (fp32 or
    with quantized factors) is not 2:4, and asking must not fail on the factor modules (it raised before)."""
    from compress.sparsity.pattern import model_pattern

    assert model_pattern(factorized) is None
    assert model_pattern(quantize(copy.deepcopy(factorized), QuantizeConfig(method="rtn", bits=4,
                                                                            group_size=32))) is None
