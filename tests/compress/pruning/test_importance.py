"""Each importance criterion finds the structures planted as unimportant in a trained tiny GPT-2."""

import pytest
import torch

from compress import PruneConfig
from compress.errors import UserError
from compress.models import load_model
from compress.pruning import choose, select
from compress.pruning.importance import importance
from compress.pruning.importance import group_sums
from tests.tiny_models import tiny_model

WEAK = 0.01  # planted structures: their weights scaled down 100x, not zeroed
HEADS = {0: [2], 1: [0]}  # one of 4 heads per block: width=0.25
MLP = {0: [5, 77, 130, 201], 1: [0, 64, 128, 255]}  # 4 of 256 channels per block
EMBD = [1, 17, 30, 33, 40, 50, 51, 52, 60, 61, 62, 63, 8, 9, 10, 11]  # 16 of 64 residual channels: width=0.25
CALIB = dict(calib_tokens=2048, seq_len=64, batch_size=8)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation"])
def test_criterion_finds_planted_heads_channels_and_residual_dims(criterion, trained_tiny, plant):
    model_dir, held = trained_tiny
    model = load_model(model_dir)
    plant(model, WEAK, heads=HEADS, mlp=MLP, embd=EMBD)
    keep = choose(model, PruneConfig(importance=criterion, width=0.25, mlp=4 / 256, round_to=1, **CALIB), held)
    for l in (0, 1):
        assert set(keep.heads[l].tolist()) == set(range(4)) - set(HEADS[l])
        assert set(keep.mlp[l].tolist()) == set(range(256)) - set(MLP[l])
    assert set(keep.embd.tolist()) == set(range(64)) - set(EMBD)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation"])
@pytest.mark.parametrize("weak_block", [0, 1])
def test_criterion_finds_the_planted_weak_block(criterion, weak_block, trained_tiny, plant):
    model_dir, held = trained_tiny
    model = load_model(model_dir)
    plant(model, WEAK, blocks=[weak_block])
    keep = choose(model, PruneConfig(importance=criterion, layers=1, **CALIB), held)
    assert keep.layers == [1 - weak_block]


def test_random_is_seeded_and_ignores_the_weights(tiny):
    cfg = PruneConfig(importance="random", width=0.5, mlp=0.5, layers=1)
    a, b = choose(tiny, cfg), choose(tiny, cfg)
    c = choose(tiny, cfg.model_copy(update={"seed": 1}))
    assert torch.equal(a.mlp, b.mlp) and a.layers == b.layers and torch.equal(a.embd, b.embd)
    assert not torch.equal(a.mlp, c.mlp)
    assert a.mlp.shape == (1, 128) and a.heads.shape == (1, 2) and a.embd.shape == (32,)


def test_magnitude_is_the_squared_norm_of_each_group():
    model = tiny_model(n_layer=1)
    s = importance(model, "magnitude", None)
    attn, ff = model.transformer.h[0].attn, model.transformer.h[0].mlp
    head1 = (attn.c_attn.weight[:, 16:32].square().sum() + attn.c_attn.weight[:, 80:96].square().sum()
             + attn.c_attn.weight[:, 144:160].square().sum() + attn.c_attn.bias[16:32].square().sum()
             + attn.c_attn.bias[80:96].square().sum() + attn.c_attn.bias[144:160].square().sum()
             + attn.c_proj.weight[16:32].square().sum())
    torch.testing.assert_close(s.heads[0, 1], head1.detach())
    chan7 = ff.c_fc.weight[:, 7].square().sum() + ff.c_fc.bias[7] ** 2 + ff.c_proj.weight[7].square().sum()
    torch.testing.assert_close(s.mlp[0, 7], chan7.detach())
    assert s.layers.shape == (1,) and s.embd.shape == (64,) and (s.embd > 0).all()


def test_group_sums_cover_every_parameter_once_per_kind(tiny):
    """Summing `1` over the groups counts each structure's parameters: no tensor is missed."""
    s = group_sums(tiny, torch.ones_like)
    E, I, V, P, H = 64, 256, 256, 128, 4
    assert s.heads[0, 0] == (E + 1) * 3 * (E // H) + (E // H) * E  # q|k|v columns (+ bias), c_proj rows
    assert s.mlp[0, 0] == E + 1 + E
    per_block = 2 + 2 + 3 * E + (E + 1) + I + (I + 1)  # ln_1, ln_2, c_attn row, c_proj col+bias, c_fc row, mlp.c_proj
    assert s.embd[0] == V + P + 2 + 2 * per_block  # wte, wpe, ln_f, two blocks
    assert s.layers[0] == E * E + E + I * E + E


def test_calibrated_criteria_need_tokens(tiny):
    with pytest.raises(UserError, match="importance=taylor needs calibration tokens"):
        choose(tiny, PruneConfig(importance="taylor", mlp=0.5))
    with pytest.raises(UserError, match="fewer than seq_len"):
        choose(tiny, PruneConfig(importance="activation", mlp=0.5, seq_len=64), torch.arange(30))


def test_select_picks_the_top_scores_in_ascending_order():
    from compress.pruning import Scores, Shape

    s = Scores(torch.tensor([0.3, 0.1, 0.2]), torch.tensor([[1.0, 3, 2, 0]] * 3), torch.rand(3, 8),
               torch.tensor([5.0, 1, 4, 2, 3, 6, 7, 0]))
    keep = select(s, Shape(n_layer=2, n_head=2, head_dim=2, n_inner=3, vocab_size=10, n_positions=8))
    assert keep.layers == [0, 2] and keep.heads.tolist() == [[1, 2], [1, 2]]
    assert keep.embd.tolist() == [0, 2, 5, 6] and keep.mlp.shape == (2, 3)
