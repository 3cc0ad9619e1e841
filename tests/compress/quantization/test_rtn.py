"""The integer grid: exactness on grid weights, error bounds, packing, and the hand-off formula."""

import pytest
import torch

from compress.quantization.handoff import dequantize
from compress.quantization.modules import QuantLinear
from compress.quantization.rtn import rtn
from compress.quantization.storage import pack_int32, unpack_int32


def _grid_weights(out_f, in_f, g, sym, seed=0):
    """Weights that lie exactly on a 4-bit grid, every group using both ends of its range."""
    gen = torch.Generator().manual_seed(seed)
    n_groups = in_f // g
    scales = torch.rand(out_f, n_groups, generator=gen) + 0.5
    if sym:
        codes = torch.randint(1, 16, (out_f, in_f), generator=gen)
        codes.view(out_f, n_groups, g)[:, :, 0] = 1  # -7 * scale: the group's max |w|
        zeros = torch.full((out_f, n_groups), 8)
    else:
        codes = torch.randint(0, 16, (out_f, in_f), generator=gen)
        codes.view(out_f, n_groups, g)[:, :, 0] = 0
        codes.view(out_f, n_groups, g)[:, :, 1] = 15
        zeros = torch.randint(1, 15, (out_f, n_groups), generator=gen)
    w = dequantize(codes, scales, zeros, g)
    return w, codes, scales, zeros


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("g", [32, 64])
def test_rtn_is_exact_on_grid_weights(sym, g):
    w, codes, scales, zeros = _grid_weights(24, 128, g, sym)
    ql = rtn("x", w, None, bits=4, group_size=g, sym=sym)
    assert torch.equal(ql.q.long(), codes)
    assert torch.equal(ql.zeros.long(), zeros)
    torch.testing.assert_close(ql.scales, scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(ql.dequantize(), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits,g,sym", [(8, None, True), (4, 32, True), (4, 128, False), (8, 64, False)])
def test_rtn_error_is_at_most_half_a_step(bits, g, sym):
    w = torch.randn(48, 256) * torch.logspace(-2, 0, 256)  # uneven column scales
    ql = rtn("x", w, None, bits=bits, group_size=g, sym=sym)
    err = (ql.dequantize() - w).abs().view(48, -1, ql.group_size)
    assert (err <= ql.scales.unsqueeze(-1) / 2 + 1e-6).all()
    assert int(ql.q.max()) < 2 ** bits


def test_per_channel_is_one_group_per_row():
    ql = rtn("x", torch.randn(8, 96), torch.randn(8), bits=8, group_size=None, sym=True)
    assert ql.group_size == 96 and ql.scales.shape == (8, 1)
    assert (ql.zeros == 128).all() and ql.q.min() >= 1  # symmetric codes avoid -128


@pytest.mark.parametrize("bits,cols", [(4, 64), (4, 37), (8, 20)])
def test_pack_int32_round_trips(bits, cols):
    codes = torch.randint(0, 2 ** bits, (5, cols), dtype=torch.uint8)
    packed = pack_int32(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, -(-cols * bits // 32))
    assert torch.equal(unpack_int32(packed, bits, cols), codes)


def test_pack_int32_puts_element_k_at_bit_4k():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    assert pack_int32(codes, 4).item() == 0xF7654321 - 2**32  # int32 wraps the top bit


def test_quant_linear_matches_handoff_formula():
    w, b, x = torch.randn(16, 64), torch.randn(16), torch.randn(3, 5, 64)
    ql = rtn("x", w, b, bits=4, group_size=32, sym=False)
    expected = x @ ql.dequantize().T + b
    torch.testing.assert_close(QuantLinear(ql)(x), expected)
