"""Shape arithmetic: parameter counts and the parameter-budget rule."""

from dataclasses import replace

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from compress import PruneConfig
from compress.pruning import Shape, budget_shape, param_count, target_shape
from compress.pruning.shapes import round_channels, round_heads, target_problems

QUICKSTART = Shape(n_layer=4, n_head=8, head_dim=32, n_inner=1024, vocab_size=4096, n_positions=256)
TEACHER = Shape(n_layer=6, n_head=6, head_dim=64, n_inner=1536, vocab_size=50257, n_positions=1024)


@pytest.mark.parametrize("kwargs", [
    {},
    {"n_inner": 100},
    {"tie_word_embeddings": False},
    {"n_layer": 3, "n_embd": 48, "n_head": 3},
])
def test_param_count_matches_the_model(kwargs):
    config = GPT2Config(**{"vocab_size": 300, "n_positions": 64, "n_layer": 2, "n_embd": 32, "n_head": 4, **kwargs})
    model = GPT2LMHeadModel(config)
    assert param_count(Shape.of_config(config)) == model.num_parameters()


def test_ratios_round_to_whole_structures():
    shape = target_shape(QUICKSTART, PruneConfig(layers=1, width=0.3, mlp=0.5))
    assert (shape.n_layer, shape.n_head, shape.n_embd, shape.n_inner) == (3, 6, 192, 512)  # 0.3 * 8 = 2.4 -> 2 heads go
    assert target_shape(QUICKSTART, PruneConfig()) == QUICKSTART


@pytest.mark.parametrize("shape", [QUICKSTART, TEACHER])
@pytest.mark.parametrize("keep", [0.9, 0.75, 0.5, 0.3])
def test_budget_shape_keeps_about_the_budget(shape, keep):
    small = budget_shape(shape, keep)
    kept = param_count(small) / param_count(shape)
    assert small.n_layer == shape.n_layer and small.head_dim == shape.head_dim
    # n_inner absorbs the rounding of the head count, unless it is clamped at full width
    assert abs(kept - keep) < 0.005 or (small.n_inner == shape.n_inner and kept < keep)
    assert abs(small.n_head / shape.n_head - keep ** 0.5) < 0.5  # widths shrink together, roughly


def test_budget_shape_of_the_reference_teacher():
    """The shapes bench/prune.py prunes the 6x384 teacher to (documented in docs/pruning.md)."""
    shapes = [target_shape(TEACHER, PruneConfig(params=k)) for k in (0.9, 0.75, 0.5)]
    assert [(s.n_head, s.n_inner) for s in shapes] == [(6, 896), (5, 1024), (4, 128)]  # round_to 64
    exact = [budget_shape(TEACHER, k) for k in (0.9, 0.75, 0.5)]
    assert [(s.n_head, s.n_inner) for s in exact] == [(6, 878), (5, 1006), (4, 148)]  # round_to 1


@pytest.mark.parametrize("shape", [QUICKSTART, TEACHER])
@pytest.mark.parametrize("keep", [0.9, 0.75, 0.5])
def test_rounded_budget_is_a_multiple_within_half_a_step(shape, keep):
    small = budget_shape(shape, keep, round_to=64)
    assert small.n_inner % 64 == 0
    step = param_count(replace(small, n_inner=64)) - param_count(replace(small, n_inner=0))  # 64 channels
    assert abs(param_count(small) - keep * param_count(shape)) <= step / 2 + 1


@pytest.mark.parametrize("n, full, multiple, expected", [
    (717, 1024, 64, 704),    # nearest multiple
    (10, 1536, 64, 64),      # at least one multiple
    (1530, 1536, 64, 1536),  # at most the full width
    (1024, 1024, 64, 1024),  # nothing pruned: unchanged
    (30, 32, 64, 30),        # a layer narrower than one multiple: exact
    (717, 1024, 1, 717),     # round_to 1: exact
])
def test_round_channels(n, full, multiple, expected):
    assert round_channels(n, full, multiple) == expected


def test_mlp_ratio_rounds_to_the_multiple():
    assert target_shape(QUICKSTART, PruneConfig(mlp=0.3)).n_inner == 704  # 1024 - 307 = 717 -> 704
    assert target_shape(QUICKSTART, PruneConfig(mlp=0.3, round_to=1)).n_inner == 717


def test_budget_with_layers_drops_blocks_first():
    small = budget_shape(QUICKSTART, 0.6, layers=1)
    assert small.n_layer == 3 and abs(param_count(small) / param_count(QUICKSTART) - 0.6) < 0.01
    assert budget_shape(QUICKSTART, 1.0) == QUICKSTART
    assert budget_shape(QUICKSTART, 0.9, layers=1) == Shape(3, 8, 32, 1024, 4096, 256)  # blocks alone suffice


@pytest.mark.parametrize("cfg, message", [
    (PruneConfig(layers=4), "layers=4 removes all 4 blocks of the 4x256 model (at most 3)"),
    (PruneConfig(width=0.95), "width=0.95 leaves 0 of 8 attention heads"),
    (PruneConfig(mlp=0.9999), "mlp=0.9999 leaves 0 of 1024 MLP channels"),
    (PruneConfig(params=0.01), "params=0.01 is below the smallest model"),
    (PruneConfig(seq_len=512), "seq_len=512 exceeds the model's 256 positions"),
])
def test_impossible_targets(cfg, message):
    problems = target_problems(QUICKSTART, cfg)
    assert len(problems) == 1 and problems[0].startswith(message)


def test_possible_targets_have_no_problems():
    assert target_problems(QUICKSTART, PruneConfig(layers=3, width=0.9, mlp=0.99, seq_len=256)) == []
    assert target_problems(QUICKSTART, PruneConfig(params=0.2)) == []


@pytest.mark.parametrize("n, full, head_dim, multiple, expected", [
    (9, 12, 64, 128, 8),     # gpt2 width 0.25: 9 heads (576) -> 8 (512); a tie goes to fewer heads
    (11, 12, 64, 128, 10),   # 704 -> 640
    (5, 8, 32, 128, 4),      # 160 -> 128 (4 heads of 32 per multiple)
    (1, 8, 32, 128, 4),      # at least one multiple
    (8, 8, 32, 128, 8),      # nothing pruned: unchanged
    (7, 12, 64, 1, 7),       # n_embd 1: exact
    (2, 3, 64, 256, 2),      # no count of 3 heads makes 256: unchanged (target_problems says so)
])
def test_round_heads(n, full, head_dim, multiple, expected):
    assert round_heads(n, full, head_dim, multiple) == expected


def test_round_to_mapping_rounds_n_embd_too_and_a_single_int_keeps_its_meaning():
    gpt2 = Shape(n_layer=12, n_head=12, head_dim=64, n_inner=3072, vocab_size=50257, n_positions=1024)
    old = target_shape(gpt2, PruneConfig(width=0.25, mlp=0.3, round_to=128))
    assert (old.n_embd, old.n_inner) == (576, 2176)  # an int rounds n_inner alone, as before
    both = target_shape(gpt2, PruneConfig(width=0.25, mlp=0.3, round_to={"n_inner": 128, "n_embd": 128}))
    assert (both.n_embd, both.n_inner) == (512, 2176)
    budget = target_shape(gpt2, PruneConfig(params=0.6, round_to={"n_inner": 128, "n_embd": 128}))
    assert budget.n_embd % 128 == 0 and budget.n_inner % 128 == 0
    assert target_shape(QUICKSTART, PruneConfig(width=0.25, mlp=0.5)) == \
        target_shape(QUICKSTART, PruneConfig(width=0.25, mlp=0.5, round_to={"n_inner": 64}))  # the quickstart's shape


def test_a_rounding_no_head_count_can_meet_is_refused():
    (problem,) = target_problems(QUICKSTART, PruneConfig(width=0.25, round_to={"n_embd": 144}))
    assert problem == ("round_to n_embd 144: no head count of the 4x256 model (8 heads of 32) makes n_embd "
                       "a multiple of 144")
