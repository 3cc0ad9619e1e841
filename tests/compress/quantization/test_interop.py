"""Stock consumers read our quantized checkpoints exactly, or refuse them.

transformers' AutoModelForCausalLM with compressed-tensors (rtn / gptq / awq / smoothquant) and with
bitsandbytes (bnb-*) is run on the saved directory, and its logits are compared with the toolkit's
own load_model. Variants that stock loaders would misread must make from_pretrained raise.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from compress import QuantizeConfig, quantize
from compress.models import load_model, save_model
from tests.tiny_models import tiny_config, tiny_model

pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed: pip install -e '.[dev]'")

CALIB = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
GPTQ = dict(method="gptq", calib_samples=4, calib_seq_len=64)
SQ = dict(method="smoothquant", calib_samples=4, calib_seq_len=64)
PRUNED = dict(n_embd=32, n_head=2, n_inner=96)  # what prune leaves: narrower, MLP not 4x

READABLE = {  # name: (quantize config, model shape, tied embeddings); together: every axis of the grid
    "rtn-w4g32": (dict(method="rtn", bits=4, group_size=32), {}, True),
    "rtn-w4-per-channel-asym": (dict(method="rtn", bits=4, group_size="per-channel", sym=False), {}, True),
    "rtn-w8": (dict(method="rtn", bits=8), {}, True),
    "rtn-w8g32-asym": (dict(method="rtn", bits=8, group_size=32, sym=False), {}, True),
    "gptq-w4g32-asym-act-order": (dict(GPTQ, bits=4, group_size=32, sym=False, act_order=True), {}, True),
    "gptq-w8-pruned": (dict(GPTQ, bits=8), PRUNED, True),
    "smoothquant-w8a8": (SQ, {}, True),
    "awq-w4g32-pruned": (dict(method="awq", bits=4, group_size=32, calib_samples=4, calib_seq_len=64), PRUNED, True),
    "rtn-w4g32-head4-pruned-untied": (dict(method="rtn", bits=4, group_size=32, lm_head="int4"), PRUNED, False),
    "gptq-w4-head8-asym-untied": (dict(GPTQ, bits=4, group_size=32, sym=False, lm_head="int8"), {}, False),
    "smoothquant-head8-untied": (dict(SQ, lm_head="int8"), {}, False),
    # per-module precision: one config group per grid, float-kept modules as fp32 nn.Linear (ignored)
    "rtn-mixed-w4g32-w8-float": (dict(method="rtn", bits=4, group_size=32, overrides={
        "h.0.*": {"bits": 8}, "h.*.mlp.c_proj": {"bits": 8, "group_size": "per-channel"},
        "h.1.attn.c_attn": {"bits": 16}}), {}, True),
    "gptq-mixed-asym-head8-pruned-untied": (dict(GPTQ, bits=4, group_size=32, sym=False, overrides={
        "h.1.*": {"bits": 8}, "h.0.mlp.c_fc": {"bits": 16}, "lm_head": {"bits": 8}}), PRUNED, False),
}
REFUSED = {  # name: (quantize config, tied embeddings, what the refusal names)
    "dynamic-int8": (dict(method="dynamic-int8"), True, "gpt2-edge-torch-dynamic-int8"),
    "rtn-w4-head4-tied": (dict(method="rtn", bits=4, group_size=32, lm_head="int4"), True, "gpt2-edge-tied-head"),
    "smoothquant-head8-tied": (dict(SQ, lm_head="int8"), True, "gpt2-edge-tied-head"),
}


def _model(shape: dict, tied: bool) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = tiny_config(**shape)
    config.tie_word_embeddings = tied
    return GPT2LMHeadModel(config).eval()


def _saved(cfg: dict, shape: dict, tied: bool, path) -> None:
    save_model(quantize(_model(shape, tied), QuantizeConfig(**cfg), CALIB), path)


def stock_load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


@torch.no_grad()
def max_logit_diff(a, b) -> float:
    return (a(IDS).logits - b(IDS).logits).abs().max().item()


@pytest.mark.parametrize("name", list(READABLE))
def test_stock_transformers_reads_the_exact_weights(name, tmp_path):
    cfg, shape, tied = READABLE[name]
    _saved(cfg, shape, tied, tmp_path)
    stock = stock_load(tmp_path)
    assert max_logit_diff(stock, load_model(tmp_path)) <= 1e-5
    assert type(stock).__name__ == "GPTBigCodeForCausalLM"


@pytest.mark.parametrize("name", list(REFUSED))
def test_stock_transformers_refuses_what_it_would_misread(name, tmp_path):
    cfg, tied, marker = REFUSED[name]
    _saved(cfg, {}, tied, tmp_path)
    with pytest.raises(ValueError, match=marker):  # pydantic's ValidationError is a ValueError
        stock_load(tmp_path)
    load_model(tmp_path)  # the toolkit still reads it


def test_a_quantized_tied_head_stores_the_matrix_once(tmp_path):
    _saved(dict(method="rtn", bits=4, group_size=32, lm_head="int4"), {}, True, tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    matrix = {k: tuple(v.shape) for k, v in t.items() if k.startswith(("lm_head.", "transformer.wte."))}
    assert matrix == {"lm_head.weight_packed": (256, 64 * 4 // 32), "lm_head.weight_scale": (256, 2),
                      "lm_head.weight_shape": (2,)}  # the (V, E) matrix: int4 codes + scales, once
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"]
    untied = tmp_path / "untied"
    _saved(dict(method="rtn", bits=4, group_size=32, lm_head="int4"), {}, False, untied)
    table_bytes = 256 * 64 * 4
    size = (tmp_path / "model.safetensors").stat().st_size
    assert (untied / "model.safetensors").stat().st_size - size >= table_bytes  # the fp32 table is not there


def test_a_pre_gptbigcode_directory_still_loads(tmp_path):
    """Directories written before the GPTBigCode form (model_type gpt2, GPT-2 row order) still load."""
    from compress.quantization.bigcode_layout import gpt2_config, rows_to_gpt2
    from compress.quantization.storage import pack_int32, unpack_int32

    model = quantize(tiny_model(), QuantizeConfig(method="rtn", bits=4, group_size=32), CALIB)
    save_model(model, tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    ours = load_model(tmp_path)
    config = gpt2_config(json.loads((tmp_path / "config.json").read_text()))
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps(config))
    n_embd, n_head = config["n_embd"], config["n_head"]
    for k in [k for k in t if ".c_attn." in k and not k.endswith("weight_shape")]:
        if k.endswith("weight_packed"):  # unpack, reorder the rows, pack again
            codes = unpack_int32(t[k], 4, 64)
            t[k] = pack_int32(rows_to_gpt2(codes, n_embd, n_head), 4)
        else:
            t[k] = rows_to_gpt2(t[k], n_embd, n_head)
    save_file(t, str(old / "model.safetensors"), metadata={"format": "pt"})
    assert max_logit_diff(load_model(old), ours) == 0.0


@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4", "bnb-fp4"])
def test_stock_transformers_bitsandbytes_reads_our_bnb_checkpoints(method, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    save_model(quantize(tiny_model(), QuantizeConfig(method=method)), tmp_path)
    ours, stock = load_model(tmp_path), stock_load(tmp_path)
    assert type(stock.transformer.h[0].mlp.c_fc).__name__ == type(ours.transformer.h[0].mlp.c_fc).__name__
    if method != "bnb-int8":
        for name, m in ours.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):  # the 4-bit weights read back bit for bit
                s = stock.get_submodule(name)
                w_ours = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
                assert torch.equal(bnb.functional.dequantize_4bit(s.weight.data, s.weight.quant_state), w_ours)
                # On AVX512-BF16 CPUs bitsandbytes picks a bf16 4-bit kernel by default (a kernel choice,
                # not the checkpoint: logits differ by ~2e-3); the toolkit keeps the fp32 one. Same here:
                s.support_avx512bf16_for_cpu = False
    assert max_logit_diff(stock, ours) <= 1e-5
