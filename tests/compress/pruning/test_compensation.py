"""The LayerNorm correction for removed residual channels."""

import torch

from compress import PruneConfig, prune
from compress.pruning import correct_layernorms, slice_gpt2
from compress.pruning.compensation import layernorm_ratios
from compress.pruning.selection import Keep
from compress.pruning.shapes import Shape
from tests.tiny_models import tiny_model

BATCHES = [torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(i)) for i in range(2)]
IDS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(9))


def test_keeping_every_channel_needs_no_correction(tiny):
    ratios = layernorm_ratios(tiny, torch.arange(64), BATCHES)
    assert ratios.shape == (5, 2)  # ln_1, ln_1, ln_2, ln_2, ln_f
    torch.testing.assert_close(ratios, torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64))


def test_correction_brings_the_pruned_logits_back_towards_the_unpruned_model(plant):
    model = tiny_model(seed=4)
    gone = list(range(0, 64, 4))  # 16 always-zero residual channels
    plant(model, 0.0, embd=gone, heads={0: [3], 1: [3]})
    keep = Keep.everything(Shape.of_config(model.config))
    keep = Keep(keep.layers, keep.heads[:, :3], keep.mlp, torch.tensor([k for k in range(64) if k not in gone]))
    with torch.no_grad():
        full = model(IDS).logits
        plain = slice_gpt2(model, keep)(IDS).logits
        corrected = slice_gpt2(correct_layernorms(model, keep.embd, BATCHES), keep)(IDS).logits
    # zero channels make the kept channels' variance 64/48 of the full one: gamma grows by ~sqrt(4/3)
    ratios = layernorm_ratios(model, keep.embd, BATCHES)
    torch.testing.assert_close(ratios[:, 0], torch.full((5,), (64 / 48) ** 0.5, dtype=torch.float64), atol=0.02, rtol=0)
    assert (corrected - full).abs().mean() < 0.5 * (plain - full).abs().mean()  # measured: 0.005 vs 0.020


def test_prune_applies_the_correction_only_with_calibration_tokens(tiny):
    cfg = PruneConfig(importance="magnitude", width=0.25, calib_tokens=512, seq_len=32)
    ids = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1))
    without = prune(tiny, cfg)
    with_ids = prune(tiny, cfg, ids)
    off = prune(tiny, cfg.model_copy(update={"correct_layernorm": False}), ids)
    assert torch.equal(without.transformer.ln_f.weight, off.transformer.ln_f.weight)
    assert not torch.equal(with_ids.transformer.ln_f.weight, off.transformer.ln_f.weight)
    assert torch.equal(with_ids.transformer.h[0].mlp.c_fc.weight, off.transformer.h[0].mlp.c_fc.weight)
