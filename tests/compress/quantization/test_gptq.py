"""GPTQ against round-to-nearest on a layer whose inputs are correlated."""

import pytest
import torch

from compress.quantization.gptq import gptq
from compress.quantization.rtn import rtn


def _correlated_inputs(n=2048, d=128, rank=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=gen)
    mix = torch.randn(rank, d, generator=gen)
    return z @ mix + 0.05 * torch.randn(n, d, generator=gen)  # (n, d), strongly correlated channels


def _output_error(x, w, ql):
    return float(((x @ ql.dequantize().T) - (x @ w.T)).pow(2).mean())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,g", [(4, 32), (4, None), (8, None)])
def test_gptq_beats_rtn_on_layer_output(bits, g, act_order):
    x = _correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    H = x.T @ x / x.shape[0]
    q_gptq = gptq("x", w, None, H, bits, g, sym=True, damp=0.01, act_order=act_order)
    q_rtn = rtn("x", w, None, bits, g, sym=True)
    assert _output_error(x, w, q_gptq) < 0.5 * _output_error(x, w, q_rtn)
    assert int(q_gptq.q.max()) < 2 ** bits and q_gptq.scales.shape == q_rtn.scales.shape


def test_gptq_groups_stay_contiguous_with_act_order():
    """Static groups: the grid of group k is fitted on columns k*G..(k+1)*G whatever the order."""
    x = _correlated_inputs(d=64)
    w = torch.randn(8, 64)
    H = x.T @ x / x.shape[0]
    a = gptq("x", w, None, H, 4, 32, sym=True, damp=0.01, act_order=True)
    assert torch.equal(a.scales, rtn("x", w, None, 4, 32, sym=True).scales)


def test_gptq_ignores_dead_inputs():
    x = _correlated_inputs(d=64)
    x[:, 5] = 0  # an input channel that is never active
    w = torch.randn(8, 64)
    ql = gptq("x", w, None, x.T @ x / x.shape[0], 4, 32, sym=True, damp=0.01, act_order=False)
    assert torch.isfinite(ql.dequantize()).all()
