"""Every method on a small trained GPT-2: finite perplexity, close to fp32 at 8 bits."""

import math

import pytest
import torch

from compress import QuantizeConfig, quantize
from compress.models import load_model
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

CALIB = dict(calib_samples=8, calib_seq_len=64)
SLOW = pytest.mark.slow  # LLM.int8 and fp4 matmuls are slow on CPU
METHODS = [  # (config, the largest perplexity ratio to fp32 we accept)
    pytest.param(dict(method="rtn", bits=8), 1.01, id="rtn-w8"),
    pytest.param(dict(method="gptq", bits=8, **CALIB), 1.01, id="gptq-w8"),
    pytest.param(dict(method="smoothquant", **CALIB), 1.05, id="smoothquant-w8a8"),
    pytest.param(dict(method="dynamic-int8"), 1.05, id="dynamic-int8"),
    pytest.param(dict(method="bnb-int8"), 1.02, id="bnb-int8", marks=SLOW),
    pytest.param(dict(method="rtn", bits=4, group_size=32), 1.3, id="rtn-w4g32"),
    pytest.param(dict(method="gptq", bits=4, group_size=32, act_order=True, lm_head="int8", **CALIB), 1.3,
                 id="gptq-w4g32-act-order"),
    pytest.param(dict(method="awq", bits=4, group_size=32, **CALIB), 1.3, id="awq-w4g32"),
    pytest.param(dict(method="bnb-nf4"), 1.3, id="bnb-nf4"),
    pytest.param(dict(method="bnb-fp4"), 1.5, id="bnb-fp4", marks=SLOW),
]


def _ppl(model, ids):
    return perplexity(TorchRunner(model), ids[:4096], seq_len=64, batch_size=16, progress=False).ppl


@pytest.fixture(scope="module")
def fp32_ppl(trained_tiny):
    model_dir, held = trained_tiny
    return _ppl(load_model(model_dir), held)


@pytest.mark.parametrize("cfg,limit", METHODS)
def test_method_perplexity_is_finite_and_close(cfg, limit, trained_tiny, fp32_ppl):
    if cfg["method"].startswith("bnb"):
        pytest.importorskip("bitsandbytes")
    model_dir, held = trained_tiny
    model = quantize(load_model(model_dir), QuantizeConfig(**cfg), held[4096:])  # calibrate off the eval span
    ppl = _ppl(model, held)
    assert math.isfinite(ppl)
    assert ppl / fp32_ppl < limit, f"{cfg}: ppl {ppl:.3f} vs fp32 {fp32_ppl:.3f}"


def test_gptq_beats_rtn_at_4_bits_on_a_trained_model(trained_tiny):
    model_dir, held = trained_tiny
    calib = held[4096:]
    rtn = _ppl(quantize(load_model(model_dir), QuantizeConfig(method="rtn", bits=4, group_size=64)), held)
    gptq = _ppl(quantize(load_model(model_dir), QuantizeConfig(method="gptq", bits=4, group_size=64, **CALIB),
                         calib), held)
    assert gptq < rtn


def test_smoothquant_folding_keeps_fp32_outputs(trained_tiny):
    from compress.quantization.smoothquant import smooth

    model_dir, held = trained_tiny
    model = load_model(model_dir)
    ids = held[:64].unsqueeze(0)
    with torch.no_grad():
        before = model(ids).logits
        smooth(model, held[4096:4096 + 512].view(8, 64), alpha=0.5)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
