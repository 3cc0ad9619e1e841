"""Stage 2 without a model: exact sizes, the knapsack path, budget filtering (fake profiles)."""

from __future__ import annotations

import itertools

import pytest

from compress.model_shape import Shape
from compress.quantization.config import QuantizeConfig
from compress.search.candidates import candidates, choose, knapsack, matrix_levels, mixed_config
from compress.search.profiles import precision_key
from compress.search.config import MB, SearchConfig
from compress.search.sizing import matrices, matrix_bytes, weight_bytes

SHAPE = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=257, n_positions=128)


def fake_profile(shape: Shape) -> dict:
    """Later blocks and the MLP output are the sensitive ones; 8 bits costs a tenth of 4 bits."""
    quant = {}
    for i, name in enumerate(matrices(shape)):
        kl4 = 0.01 * (i + 1) * (3 if name.endswith("mlp.c_proj") else 1)
        quant[name] = {"4g32": kl4, "8g32": kl4 / 10, "4g64": kl4 * 1.25, "8g64": kl4 / 8}
    return {"quant": quant, "prune": {"w0-m0-l0": 0.0}}


def search(max_mb: float, **space) -> SearchConfig:
    return SearchConfig(target="orin-nano", budget={"max_mb": max_mb}, max_trials=50,
                        space={"quantize": {"methods": ["rtn"], "group_sizes": [32], "lm_head": ["int4", "int8"],
                                            **space}, "export": "none"})


LEVELS = matrix_levels(SHAPE, [4, 8], [32], [4, 8])


def config_of(assign: dict[str, tuple]) -> QuantizeConfig:
    return QuantizeConfig(**mixed_config("rtn", assign, 1))


def predicted_kl(profile: dict, assign: dict) -> float:
    return sum(0.0 if lv[0] == 16 else profile[n][precision_key(*lv)] for n, lv in assign.items())


def test_the_knapsack_finds_the_least_kl_within_the_room():
    """Against brute force over all 3**9 assignments of the two-block model (room small enough that the
    dynamic programme works in single bytes, so it must be exact)."""
    profile = fake_profile(SHAPE)["quant"]
    mats = matrices(SHAPE)
    start = {n: LEVELS[n][0] for n in mats}

    def extra(assign):
        return sum(matrix_bytes(*mats[n], *lv) - matrix_bytes(*mats[n], *start[n]) for n, lv in assign.items())

    room = 4_000
    brute = min(predicted_kl(profile, a) for a in (dict(zip(mats, combo))
                                                   for combo in itertools.product(*(LEVELS[n] for n in mats)))
                if extra(a) <= room)
    found = knapsack(profile, SHAPE, LEVELS, room)
    assert extra(found) <= room
    assert predicted_kl(profile, found) == pytest.approx(brute)
    assert predicted_kl(profile, found) < predicted_kl(profile, start)


def test_the_knapsack_spends_the_room_where_kl_per_byte_is_best_not_on_the_worst_matrix():
    levels = matrix_levels(SHAPE, [4], [32, 64], [4])
    profile = {n: {"4g64": 0.02, "4g32": 0.01} for n in matrices(SHAPE)}
    profile["lm_head"] = {"4g64": 0.5, "4g32": 0.495}  # by far the worst, and little to gain for 1,028 bytes
    found = knapsack(profile, SHAPE, levels, 2_500)
    assert found["lm_head"] == (4, 64) and sum(lv == (4, 32) for lv in found.values()) >= 2


def test_every_candidate_chosen_fits_the_size_budget_and_the_mixed_ones_fill_it():
    every = candidates(SHAPE, search(0.2), fake_profile(SHAPE))
    int4 = weight_bytes(SHAPE, QuantizeConfig(method="rtn", bits=4, group_size=32, lm_head="int4"))
    max_mb = (int4 + 20_000) / MB
    cfg = search(max_mb)
    every = candidates(SHAPE, cfg, fake_profile(SHAPE))
    chosen, closest = choose(every, cfg)
    assert chosen and all(c.bytes <= max_mb * MB for c in chosen)
    assert all(c.bytes > max_mb * MB for c in closest)
    mixed = [c for c in chosen if "overrides" in c.quantize]
    assert mixed and chosen[0] in mixed  # the knapsack beats uniform int4 in predicted KL at this size
    assert min(c.predicted_kl for c in mixed) < min(c.predicted_kl for c in chosen if c.bytes == int4)


def test_beside_every_uniform_variant_a_mixed_one_no_larger_and_no_worse_by_prediction():
    cfg = SearchConfig(target="orin-nano", budget={"max_mb": 1.0}, max_trials=50,
                       space={"quantize": {"methods": ["rtn"], "bits": [4], "group_sizes": [32, 64],
                                           "lm_head": ["int4"]}})  # export onnx: sizes with the graph
    every = candidates(SHAPE, cfg, fake_profile(SHAPE))
    uniform = [c for c in every if "overrides" not in c.quantize and c.bytes <= MB]
    mixed = [c for c in every if "overrides" in c.quantize]
    assert len(uniform) == 2
    for u in uniform:
        beside = [m for m in mixed if m.bytes <= u.bytes]
        if u.bytes > min(x.bytes for x in uniform):  # the cheapest uniform one is the knapsack's start
            assert beside and min(m.predicted_kl for m in beside) < u.predicted_kl


def test_an_upgrade_that_does_not_fit_is_left_and_smaller_ones_still_taken():
    profile = fake_profile(SHAPE)["quant"]
    profile["lm_head"] = {"4g32": 1.0, "8g32": 0.0}  # the best upgrade by far, and too big for the room
    room = 8_000  # the head 4 -> 8 costs 8,224 bytes; two attn.c_proj upgrades (2,048 each) fit
    found = knapsack(profile, SHAPE, LEVELS, room)
    start = {n: LEVELS[n][0] for n in found}
    assert found["lm_head"] == (4, 32) and sum(found[n] != start[n] for n in found) >= 2
    grown = weight_bytes(SHAPE, config_of(found)) - weight_bytes(SHAPE, config_of(start))
    assert grown <= room + 64  # + header padding


def test_an_onnx_artifact_is_sized_with_its_graph():
    onnx_cfg = SearchConfig(target="orin-nano", budget={"max_mb": 1.0}, max_trials=50,
                            space={"quantize": {"methods": ["rtn"], "group_sizes": [32], "lm_head": ["int4"],
                                                "mixed": False}})
    none_cfg = onnx_cfg.model_copy(update={"space": onnx_cfg.search_space.model_copy(update={"export": "none"})})
    [with_graph] = candidates(SHAPE, onnx_cfg, fake_profile(SHAPE))[:1]
    [weights_only] = candidates(SHAPE, none_cfg, fake_profile(SHAPE))[:1]
    assert with_graph.bytes - weights_only.bytes == 34_500 * SHAPE.n_layer
