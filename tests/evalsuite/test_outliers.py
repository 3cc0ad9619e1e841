"""Planting activation outliers keeps the fp32 function; the profile finds them where they were planted."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from evalsuite.outliers import mimic_spec, outlier_profile, plant_outliers, plant_spec

CHANNELS = [3, 17, 40, 59]


def _model(seed: int = 0) -> GPT2LMHeadModel:
    """A tiny GPT-2 whose LayerNorms are not the identity (trained ones never are)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=128)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_(0, 0.1)
    return model


IDS = torch.randint(0, 256, (6, 64), generator=torch.Generator().manual_seed(0))


def test_planting_preserves_fp32_logits():
    model = _model()
    planted = plant_outliers(copy.deepcopy(model), CHANNELS, 40.0)
    with torch.no_grad():
        before, after = model(IDS).logits, planted(IDS).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    ln = planted.transformer.h[1].ln_2
    assert torch.allclose(ln.weight[CHANNELS], 40 * model.transformer.h[1].ln_2.weight[CHANNELS])  # it did plant


def test_profile_finds_the_planted_channels():
    plain = outlier_profile(_model(), IDS, seq_len=64)
    planted = outlier_profile(plant_outliers(_model(), CHANNELS, 40.0), IDS, seq_len=64)
    assert set(planted.layers) == {f"h.{b}.{p}" for b in range(2)
                                   for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")} | {"lm_head"}
    for b in range(2):
        for proj in ("attn.c_attn", "mlp.c_fc"):  # fed by ln_1 / ln_2: the outliers are there
            p = planted.layers[f"h.{b}.{proj}"]
            assert sorted(c for c, _ in p.top(4)) == CHANNELS
            assert p.ratio > 10 * plain.layers[f"h.{b}.{proj}"].ratio
        for proj in ("attn.c_proj", "mlp.c_proj"):  # downstream of the rescaled rows: unchanged
            assert planted.layers[f"h.{b}.{proj}"].ratio == pytest.approx(plain.layers[f"h.{b}.{proj}"].ratio, rel=1e-3)
    worst = planted.worst()
    assert worst.layer.endswith(("attn.c_attn", "mlp.c_fc")) and worst.describe().endswith(f"{worst.ratio:.0f}x")
    assert planted.worst(["mlp.c_proj"]).layer.endswith("mlp.c_proj")
    d = planted.as_dict()
    assert d["tokens"] == IDS.numel() and d["inputs"]["h.0.attn.c_attn"]["top_channels"][0][0] in CHANNELS


def test_profile_of_a_token_stream_uses_consecutive_windows():
    stream = IDS.reshape(-1)
    assert outlier_profile(_model(), stream, seq_len=64, max_windows=3).tokens == 3 * 64
    with pytest.raises(ValueError, match="at least 64 tokens"):
        outlier_profile(_model(), stream[:10], seq_len=64)


def test_mimic_spec_reproduces_a_measured_profile():
    spec_target = {0: {5: 80.0, 9: 30.0}, 1: {20: 150.0, 33: 60.0}}
    target = outlier_profile(plant_spec(_model(seed=1), spec_target), IDS, seq_len=64)
    model = _model(seed=2)
    spec = mimic_spec(target, outlier_profile(model, IDS, seq_len=64), k=2)
    mimic = outlier_profile(plant_spec(model, spec), IDS, seq_len=64)
    for b in range(2):
        want = [r for _, r in target.layers[f"h.{b}.attn.c_attn"].top(2)]
        got = [r for _, r in mimic.layers[f"h.{b}.attn.c_attn"].top(2)]
        assert got == pytest.approx(want, rel=0.1)


@pytest.mark.parametrize("spec, message", [({5: {0: 2.0}}, "block 5 out of range"),
                                           ({0: {64: 2.0}}, "channel 64 out of range"),
                                           ({0: {1: 0.0}}, "factor must be > 0")])
def test_bad_plant_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        plant_spec(_model(), spec)
