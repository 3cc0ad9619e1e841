"""Stage 2 without a model: exact sizes, the knapsack path, budget filtering (fake profiles)."""

from __future__ import annotations

from compress.model_shape import Shape
from compress.quantization.config import QuantizeConfig
from compress.search.candidates import candidates, choose, knapsack_path
from compress.search.config import MB, SearchConfig
from compress.search.sizing import matrices, weight_bytes

SHAPE = Shape(n_layer=2, n_head=4, head_dim=16, n_inner=256, vocab_size=257, n_positions=128)


def fake_profile(shape: Shape) -> dict:
    """Later blocks and the MLP output are the sensitive ones; 8 bits costs a tenth of 4 bits."""
    quant = {}
    for i, name in enumerate(matrices(shape)):
        kl4 = 0.01 * (i + 1) * (3 if name.endswith("mlp.c_proj") else 1)
        quant[name] = {"4g32": kl4, "8g32": kl4 / 10}
    return {"quant": quant, "prune": {"w0-m0-l0": 0.0}}


def search(max_mb: float, **space) -> SearchConfig:
    return SearchConfig(target="orin-nano", budget={"max_mb": max_mb}, max_trials=50,
                        space={"quantize": {"methods": ["rtn"], "group_sizes": [32], "lm_head": ["int4", "int8"],
                                            **space}})


def config_of(assign: dict[str, int]) -> QuantizeConfig:
    body = {n: {"bits": b} for n, b in assign.items() if n != "lm_head" and b != 4}
    return QuantizeConfig(method="rtn", bits=4, group_size=32, lm_head={4: "int4", 8: "int8"}[assign["lm_head"]],
                          overrides=body or None)


def test_the_knapsack_path_grows_in_bytes_and_shrinks_in_kl():
    path = knapsack_path(fake_profile(SHAPE)["quant"], SHAPE, 32, [4, 8])
    sizes = [weight_bytes(SHAPE, config_of(a)) for a in path]
    assert sizes == sorted(sizes) and len(path) > 3
    first = [n for n in path[1] if path[1][n] != path[0][n]]
    assert len(first) == 1 and first[0].startswith("h.1.")  # the most KL per byte (the later block) goes up first
    assert path[-1]["h.1.mlp.c_proj"] == 16 and path[-1]["lm_head"] == 8  # the end: everything at its top level


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


def test_an_upgrade_that_does_not_fit_is_skipped_not_the_end_of_the_path():
    profile = fake_profile(SHAPE)["quant"]
    profile["lm_head"] = {"4g32": 1.0, "8g32": 0.0}  # the best upgrade by far, and too big for the room
    room = 8_000  # the head 4 -> 8 costs 8,224 bytes; two attn.c_proj upgrades (2,048 each) fit
    path = knapsack_path(profile, SHAPE, 32, [4, 8], room)
    start = weight_bytes(SHAPE, config_of(path[0]))
    assert all(a["lm_head"] == 4 for a in path) and len(path) >= 3
    assert all(weight_bytes(SHAPE, config_of(a)) - start <= room + 64 for a in path)  # + header padding
