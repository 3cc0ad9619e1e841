"""Low-rank factorization as a dimension of the search: the factors' exact bytes, stage 1's factorize KL
and ranks, factorized candidates, and a tiny search whose factorized trials share prune, factorize and
distill across their quantize variants and measure the size they predicted."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from compress.errors import PlanError
from compress.lowrank.api import factorize
from compress.lowrank.config import FactorizeConfig
from compress.model_shape import Shape
from compress.models import save_model
from compress.plan import load_plan
from compress.pruning.config import PruneConfig
from compress.quantization import QuantizeConfig, quantize
from compress.quantization.footprint import quantized_bytes
from compress.search.candidates import HEAL, candidates, unfit_factorize
from compress.search.config import SearchConfig, SearchSpace
from compress.search.profiles import profiles
from compress.search.run import run_search
from compress.search.sizing import matrices
from tests.conftest import text_plan
from tests.tiny_models import tiny_model

MLP = ["mlp.c_fc", "mlp.c_proj"]


@pytest.mark.parametrize("conf", [
    {"method": "rtn", "bits": 4, "group_size": 32, "lm_head": "int8"},
    {"method": "rtn", "bits": 4, "group_size": 32, "lm_head": "int4", "sym": False},
    {"method": "gptq", "bits": 8, "group_size": "per-channel", "lm_head": "keep", "calib_samples": 2},
])
def test_footprint_prices_each_factor_as_the_saved_file_holds_it(tmp_path, conf):
    """Ranks that differ per matrix (an energy budget; one matrix made nearly rank 8), attn.c_proj left dense."""
    model = tiny_model(seed=3, n_embd=128, n_inner=512)
    with torch.no_grad():
        w = model.transformer.h[0].mlp.c_fc.weight  # Conv1D [in, out]
        w.copy_(w[:, :8] @ torch.randn(8, w.shape[1]) * 0.1)
    calib = torch.randint(0, 256, (4096,))
    layers = factorize(model, FactorizeConfig(method="svd", energy=0.9, rank_multiple=32,
                                              layers=("attn.c_attn", *MLP)))
    ranks = {n.removeprefix("transformer."): v["rank"] for n, v in layers.items()}
    assert len(set(ranks.values())) > 1, ranks  # the test means something only with unequal ranks
    cfg = QuantizeConfig(**conf)
    save_model(quantize(model, cfg, calib), tmp_path)
    c = model.config
    predicted = quantized_bytes(cfg, c.n_layer, c.n_embd, c.n_inner, c.vocab_size, c.n_positions, ranks=ranks)
    assert predicted == (tmp_path / "model.safetensors").stat().st_size
    dense = quantized_bytes(cfg, c.n_layer, c.n_embd, c.n_inner, c.vocab_size, c.n_positions)
    assert predicted < dense


def test_footprint_refuses_factors_for_a_method_that_does_not_quantize_them():
    with pytest.raises(ValueError, match="does not quantize low-rank factors"):
        quantized_bytes(QuantizeConfig(method="smoothquant"), 2, 64, 256, 256, 128, ranks={"h.0.mlp.c_fc": 32})


@pytest.mark.parametrize("proxy", ["gptq", "rtn"])
def test_the_profile_has_the_factorize_kl_and_ranks_and_its_key_has_the_settings(tmp_path, proxy):
    model = tiny_model(seed=0)
    ids = torch.randint(0, 256, (4096,))
    space = SearchSpace(factorize={"energy": [0.5, 0.9], "layers": MLP, "calib_tokens": 512},
                        quantize={"group_sizes": [32]})
    shapes = {"w0-m0-l0": PruneConfig(), "w0.5-m0-l0": PruneConfig(width=0.5, importance="magnitude")}
    settings = SearchConfig(profile={"windows": 2, "seq_len": 32, "proxy": proxy, "hessian_windows": 4}).profile
    prof = profiles(tmp_path, ["k"], model, ids, settings, [(4, 32), (8, 32)], shapes, space.factorize_settings())
    seen = prof["factorize"]["w0-m0-l0"]
    assert set(seen) == {"whiten-e0.5", "whiten-e0.9"}
    for fkey, setting in space.factorize_settings().items():
        low = copy.deepcopy(model)
        layers = factorize(low, FactorizeConfig(**setting), ids)  # the step's own choice, again
        assert seen[fkey]["ranks"] == {n.removeprefix("transformer."): v["rank"] for n, v in layers.items()}
        assert set(seen[fkey]["ranks"]) == {f"h.{i}.{p}" for i in range(2) for p in MLP}
        assert seen[fkey]["kl"] > 0
        assert seen[fkey]["quant"]["4g32"] > seen[fkey]["quant"]["8g32"] >= 0  # the factors quantized, measured
    # n_embd 32 after width 0.5: mlp.c_fc [32, 256] breaks even at rank 28, below rank_multiple 32
    assert "break-even" in prof["factorize"]["w0.5-m0-l0"]["whiten-e0.9"]["skipped"]
    again = profiles(tmp_path, ["k"], model, ids, settings, [(4, 32), (8, 32)], shapes, space.factorize_settings())
    assert again["reused"] and again["factorize"] == prof["factorize"]
    other = profiles(tmp_path, ["k"], model, ids, settings, [(4, 32), (8, 32)], shapes, {})
    assert not other["reused"] and other["factorize"] == {}


SHAPE = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=257, n_positions=128)


def test_factorized_candidates_are_sized_from_the_ranks_and_predicted_from_both_profiles():
    cfg = SearchConfig(target="orin-nano", budget={"max_mb": 1.0}, max_trials=50,
                       space={"quantize": {"methods": ["rtn", "awq"], "bits": [4], "group_sizes": [32],
                                           "lm_head": ["int8"], "mixed": False},
                              "factorize": {"energy": [0.9], "params": [0.5], "layers": MLP}})
    ranks = {n: 32 for n in matrices(SHAPE) if n.endswith(("mlp.c_fc", "mlp.c_proj"))}
    quant = {n: {"4g32": 0.01, "8g32": 0.001} for n in matrices(SHAPE)}
    profile = {"quant": quant, "prune": {"w0-m0-l0": 0.0},
               "factorize": {"w0-m0-l0": {"whiten-e0.9": {"kl": 0.5, "ranks": ranks, "quant": {"4g32": 0.2}},
                                          "whiten-p0.5": {"kl": 0.5, "ranks": dict(ranks), "quant": {"4g32": 0.2}}}}}
    every = candidates(SHAPE, cfg, profile)
    low = [c for c in every if c.factorize]
    assert [c.quantize["method"] for c in low] == ["rtn"]  # awq does not quantize factors; p0.5 made e0.9's model
    assert low[0].factorize["energy"] == 0.9
    dense = next(c for c in every if not c.factorize and c.quantize == low[0].quantize)
    assert low[0].factorize["rank_multiple"] == 32 and low[0].ranks == ranks
    assert low[0].bytes < dense.bytes and low[0].tokens_per_s > dense.tokens_per_s
    dense_left = 0.01 * 4 + 0.001  # 4 attention matrices at 4 bits, the head at 8: their own profile
    assert low[0].predicted_kl == pytest.approx(HEAL * 0.5 + 0.2 + dense_left)


def test_a_factorize_budget_that_fits_no_shape_is_named_with_the_fix():
    space = SearchSpace(factorize={"energy": [0.9], "layers": ["attn.c_proj"]}, quantize={"group_sizes": [32]})
    message = unfit_factorize(SHAPE, space)
    assert message.startswith("search.space.factorize: whiten-e0.9 fits no shape")
    assert "attn.c_proj [64, 64]" in message and "smaller group sizes" in message
    assert unfit_factorize(SHAPE, SearchSpace(factorize={"energy": [0.9], "layers": MLP},
                                              quantize={"group_sizes": [32]})) is None


def _plan_file(tmp_path, model, space, budget=None, max_trials=4):
    body = text_plan(model, [])
    body.pop("steps")
    body["search"] = {"target": "orin-nano", "budget": budget or {"max_mb": 0.5}, "space": space,
                      "max_trials": max_trials, "profile": {"windows": 2, "seq_len": 32}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("factorize, where, message", [
    ({"energy": [0.9], "rank": [32]}, "factorize.rank:", "unknown key"),
    ({"energy": [1.5]}, "factorize.energy[0]:", "less than 1"),
    ({"method": "tucker", "energy": [0.9]}, "factorize.method:", "unknown method tucker"),
    ({"energy": [0.9], "layers": ["mlp.c_fc", "mlp.c_fc"]}, "search.space.factorize:", "named twice"),
])
def test_bad_factorize_keys_name_their_key_path(tmp_path, random_tiny_dir, factorize, where, message):
    path = _plan_file(tmp_path, random_tiny_dir, {"factorize": factorize, "quantize": {"methods": ["rtn"]}})
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert any(p.startswith("search.space.") and where in p and message in p for p in e.value.problems), \
        e.value.problems


def test_a_factorize_space_needs_a_method_that_quantizes_factors(tmp_path, random_tiny_dir):
    path = _plan_file(tmp_path, random_tiny_dir, {"factorize": {"energy": [0.9]},
                                                  "quantize": {"methods": ["smoothquant"], "bits": [8]}})
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert any(p.startswith("search.space.factorize") and "quantizes low-rank factors" in p
               for p in e.value.problems), e.value.problems


def test_a_search_with_factorize_shares_prune_factorize_and_distill_across_variants(tmp_path, random_tiny_dir):
    space = {"prune": {"mlp": [0.5], "importance": "magnitude"},  # n_inner 128: the MLP breaks even at 42
             "distill": {"tokens": 1024, "seq_len": 32, "batch_tokens": 256},
             "quantize": {"methods": ["rtn"], "bits": [4, 8], "group_sizes": [32], "lm_head": ["int8"],
                          "mixed": False},
             "factorize": {"method": "whiten", "energy": [0.9], "layers": MLP, "calib_tokens": 512},
             "export": "none"}
    result = run_search(load_plan(_plan_file(tmp_path, random_tiny_dir, space)), tmp_path / "out", progress=False)
    low = [t for t in result.trials if t["candidate"]["factorize"]]
    assert len(result.trials) == 4 and len(low) == 2
    kinds = [k for t in result.trials for k in t["ran_kinds"]]
    assert kinds.count("prune") == 1 and kinds.count("factorize") == 1  # shared by every variant
    assert kinds.count("distill") == 2 and kinds.count("quantize") == 4  # one per (shape, factorize)
    assert [list(s) for s in low[0]["steps"]] == [["prune"], ["factorize"], ["distill"], ["quantize"]]
    for t in result.trials:
        assert t["weight_bytes"] == round(t["candidate"]["predicted_mb"] * 1e6)  # exact, factors included
    assert all(t["factorize_ranks_as_profiled"] for t in low)
    assert all(t["mb"] < min(d["mb"] for d in result.trials if d not in low and d["steps"][-1] == t["steps"][-1])
               for t in low)


def test_the_cli_exits_2_in_one_line_when_no_shape_admits_a_factorize_budget(tmp_path, random_tiny_dir, capsys):
    from compress import run as run_cli

    space = {"factorize": {"energy": [0.9], "layers": ["attn.c_proj"]},  # [64, 64] breaks even at 31 < 32
             "quantize": {"methods": ["rtn"], "group_sizes": [32], "mixed": False}, "export": "none"}
    path = _plan_file(tmp_path, random_tiny_dir, space)
    assert run_cli.main([str(path), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.space.factorize: whiten-e0.9 fits no shape" in err[0], err
