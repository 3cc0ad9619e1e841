"""Stage 1 on a tiny trained-like model: the GPTQ proxy is the quantize step's own GPTQ, one matrix at a time."""

from __future__ import annotations

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
