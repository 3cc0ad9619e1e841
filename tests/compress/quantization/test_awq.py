"""AWQ: the scales fold exactly, and int4 AWQ beats int4 rtn where LayerNorm outputs carry outliers."""

import copy

import pytest
import torch

from compress import QuantizeConfig, quantize
from compress.models import load_model, save_model
from compress.quantization.awq import scale_model, search_clip, search_scale, output_error, fake_quant
from compress.quantization.folding import fold_into_layernorm
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner
from tests.tiny_models import tiny_model

CALIB = dict(calib_samples=8, calib_seq_len=64)
OUTLIERS, FACTOR = (3, 17, 40, 51), 40.0  # channels of ln_1 / ln_2 made 40x larger, as in real GPT-2
IDS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))


def plant_outliers(model, channels=OUTLIERS, factor=FACTOR):
    """Scale ln_1 / ln_2 gamma and beta of `channels` by `factor` and divide the matching Conv1D input
    rows by it: the fp32 function is unchanged, the projections' inputs get GPT-2-like outliers."""
    s = torch.ones(model.config.n_embd)
    s[list(channels)] = 1 / factor  # fold_into_layernorm divides the LayerNorm by s, multiplies rows by s
    for block in model.transformer.h:
        fold_into_layernorm(block.ln_1, block.attn.c_attn, s)
        fold_into_layernorm(block.ln_2, block.mlp.c_fc, s)
    return model


def _ppl(model, ids):
    return perplexity(TorchRunner(model), ids[:4096], seq_len=64, batch_size=16, progress=False).ppl


@pytest.fixture(scope="module")
def outlier_model(trained_tiny):
    """(fp32 trained tiny GPT-2 with planted outliers, held-out ids, its fp32 perplexity)."""
    model_dir, held = trained_tiny
    model = plant_outliers(load_model(model_dir))
    return model, held, _ppl(model, held)


def test_planted_outliers_keep_the_fp32_function(trained_tiny):
    model_dir, held = trained_tiny
    model = load_model(model_dir)
    ids = held[:64].unsqueeze(0)
    with torch.no_grad():
        before = model(ids).logits
        seen = []
        model.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        after = plant_outliers(model)(ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    amax = seen[0].abs().amax(dim=(0, 1))  # (E,) ln_1 output per channel
    assert amax[list(OUTLIERS)].min() > 5 * amax.median()  # the outliers are there


def test_folded_scales_keep_the_fp32_function(outlier_model):
    model, held, _ = outlier_model
    model = copy.deepcopy(model)  # the fixture is shared
    ids = held[:64].unsqueeze(0)
    with torch.no_grad():
        before = model(ids).logits
        scale_model(model, held[4096:4096 + 512].view(8, 64), lambda name: (4, 32), sym=True, grid=20)
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    ln = model.transformer.h[0].ln_1.weight
    assert not torch.equal(ln, outlier_model[0].transformer.h[0].ln_1.weight)  # something was folded


def test_awq_int4_beats_rtn_int4_on_outliers(outlier_model, capsys):
    model, held, fp32 = outlier_model
    calib = held[4096:]  # calibrate off the evaluation span

    def run(**cfg):
        q = quantize(copy.deepcopy(model), QuantizeConfig(bits=4, group_size=32, **cfg), calib)
        with torch.no_grad():
            err = float((q(IDS).logits - model(IDS).logits).abs().mean())
        return _ppl(q, held), err

    (rtn_ppl, rtn_err), (awq_ppl, awq_err) = run(method="rtn"), run(method="awq", **CALIB)
    with capsys.disabled():
        print(f"\nint4 g32 on planted outliers: fp32 ppl {fp32:.3f}; rtn {rtn_ppl:.3f} "
              f"({rtn_ppl / fp32:.4f}x, logit err {rtn_err:.4f}); awq {awq_ppl:.3f} "
              f"({awq_ppl / fp32:.4f}x, logit err {awq_err:.4f})")
    assert awq_ppl - fp32 < 0.5 * (rtn_ppl - fp32)  # AWQ at least halves rtn's perplexity loss
    assert awq_err < 0.7 * rtn_err
