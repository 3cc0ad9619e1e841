"""Stage 1 on a tiny trained-like model: the GPTQ proxy is the quantize step's own GPTQ, one matrix at a time."""

from __future__ import annotations

import pytest
import torch

from compress.search.profiles import Calibration, input_hessians, quant_profile
from tests.tiny_models import tiny_model


def test_the_gptq_proxy_costs_less_kl_than_round_to_nearest_at_4_bits():
    torch.manual_seed(0)
    model = tiny_model(seed=1).eval()
    ids = torch.randint(0, model.config.vocab_size, (4096,))
    calib = Calibration(model, ids, windows=4, seq_len=32, seed=0)
    hessians = input_hessians(model, calib.windows)
    rtn = quant_profile(model, calib, [(4, 32)], "rtn")
    gptq = quant_profile(model, calib, [(4, 32)], "gptq", hessians)
    assert set(gptq) == set(rtn) and "lm_head" in gptq
    assert sum(v["4g32"] for v in gptq.values()) < sum(v["4g32"] for v in rtn.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quant_profile(model, calib, [(8, 32)], "gptq", hessians)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every matrix put back


def test_around_the_cheapest_start_the_values_sum_to_the_starts_kl_and_each_move_is_measured():
    from compress.search.profiles import cheapest

    torch.manual_seed(0)
    model = tiny_model(seed=1).eval()
    ids = torch.randint(0, model.config.vocab_size, (4096,))
    calib = Calibration(model, ids, windows=4, seq_len=32, seed=0)
    grid = [(4, 64), (4, 32), (8, 32)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = quant_profile(model, calib, grid, "rtn", baseline="cheapest")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert cheapest(grid, 64) == (4, 64) and cheapest(grid, 96) == (4, 32)  # 64 does not divide 96
    # the start (every matrix at its cheapest) measured directly
    from compress.search.profiles import _module, _rtn, matrix_names
    from transformers.pytorch_utils import Conv1D

    with torch.no_grad():
        for n in matrix_names(model):
            m = _module(model, n)
            w = m.weight.t() if isinstance(m, Conv1D) else m.weight
            fake = _rtn(n, w.float(), None, *cheapest(grid, w.shape[1])).dequantize()
            m.weight.copy_(fake.t() if isinstance(m, Conv1D) else fake)
    start = calib.kl(model)
    total = sum(v["4g64"] for v in prof.values())  # every input width here (64, 256) takes g64
    assert total == pytest.approx(start, rel=1e-6)
    assert all(v["float"] < v["4g64"] for v in prof.values())  # kept float (the others at the start): measured
