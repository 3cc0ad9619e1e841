"""Saving and reloading quantized models: identical logits, the compressed-tensors layout, the hand-off."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from compress import QuantizeConfig, quantize
from compress.errors import UserError
from compress.models import load_model, save_model
from compress.quantization import is_quantized_dir, quantized_linears
from compress.quantization.bigcode_layout import rows_to_stock
from compress.quantization.modules import quant_linears
from tests.tiny_models import tiny_config, tiny_model

CALIB = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))

CONFIGS = {
    "rtn-w8": dict(method="rtn", bits=8),
    "rtn-w4-asym-head4": dict(method="rtn", bits=4, group_size=32, sym=False, lm_head="int4"),
    "gptq-w4-head8": dict(method="gptq", bits=4, group_size=32, lm_head="int8", calib_samples=4, calib_seq_len=64),
    "smoothquant": dict(method="smoothquant", calib_samples=4, calib_seq_len=64),
    "awq-w4-asym-head4": dict(method="awq", bits=4, group_size=32, sym=False, lm_head="int4", calib_samples=4,
                              calib_seq_len=64),
    "dynamic-int8": dict(method="dynamic-int8"),
    "bnb-int8": dict(method="bnb-int8"),
    "bnb-nf4": dict(method="bnb-nf4"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_reload_gives_identical_logits(name, tmp_path):
    if name.startswith("bnb"):
        pytest.importorskip("bitsandbytes")
    model = quantize(tiny_model(), QuantizeConfig(**CONFIGS[name]), CALIB)
    with torch.no_grad():
        before = model(IDS).logits
    save_model(model, tmp_path)
    assert is_quantized_dir(tmp_path)
    reloaded = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, before)
    save_model(reloaded, tmp_path / "again")  # a reloaded model saves back to the same tensors
    assert load_file(tmp_path / "again" / "model.safetensors").keys() == load_file(tmp_path / "model.safetensors").keys()


def test_weight_only_layout_is_compressed_tensors_pack_quantized(tmp_path):
    save_model(quantize(tiny_model(), QuantizeConfig(method="rtn", bits=4, group_size=32)), tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["config_groups"]["group_0"]["weights"] == {"num_bits": 4, "type": "int", "symmetric": True,
                                                         "dynamic": False, "strategy": "group", "group_size": 32}
    assert qc["ignore"] == ["lm_head"] and qc["gpt2_edge"]["method"] == "rtn"
    t = load_file(tmp_path / "model.safetensors")
    assert t["transformer.h.0.mlp.c_fc.weight_packed"].shape == (256, 64 * 4 // 32)  # [out, in/8] int32
    assert t["transformer.h.0.mlp.c_fc.weight_scale"].shape == (256, 2)
    assert "transformer.h.0.mlp.c_fc.weight" not in t and "lm_head.weight" not in t  # tied: wte only


def test_a_quantized_tied_head_quantizes_the_lookup_table_too(tmp_path):
    model = tiny_model()
    wte = model.transformer.wte.weight.detach().clone()
    quantized = quantize(model, QuantizeConfig(method="rtn", bits=8, lm_head="int4", group_size=32))
    head = quantized.lm_head.record().dequantize()  # (V, E)
    assert not torch.equal(head, wte) and torch.equal(quantized.transformer.wte.weight, head)
    save_model(quantized, tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    assert "transformer.wte.weight" not in t  # stored once: the lookup is rebuilt from the head's codes
    assert t["lm_head.weight_packed"].shape == (256, 64 * 4 // 32)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"]
    reloaded = load_model(tmp_path)
    assert not reloaded.config.tie_word_embeddings
    assert torch.equal(reloaded.transformer.wte.weight, head)
    assert torch.equal(reloaded.lm_head.record().dequantize(), head)


def test_an_untied_head_is_quantized_alone():
    config = tiny_config()
    config.tie_word_embeddings = False
    model = GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is not model.transformer.wte.weight
    wte = model.transformer.wte.weight.detach().clone()
    quantized = quantize(model, QuantizeConfig(method="rtn", bits=8, lm_head="int4", group_size=32))
    assert torch.equal(quantized.transformer.wte.weight, wte)


def test_handoff_records_match_the_model(tmp_path):
    model = quantize(tiny_model(), QuantizeConfig(method="smoothquant", calib_samples=4), CALIB)
    save_model(model, tmp_path)
    records = quantized_linears(tmp_path)
    live = quant_linears(model)
    assert records.keys() == live.keys() and len(records) == 8
    for name, r in records.items():
        m = live[name]
        assert torch.equal(r.q, m.q) and torch.equal(r.scales, m.scales) and torch.equal(r.zeros, m.zeros)
        assert r.input_scale == pytest.approx(m.input_scale, rel=1e-7) and r.input_scale > 0
        assert r.q.shape == (r.out_features, r.in_features) and r.bits == 8


def test_handoff_refuses_methods_without_an_onnx_form(tmp_path):
    save_model(quantize(tiny_model(), QuantizeConfig(method="dynamic-int8"), CALIB), tmp_path)
    with pytest.raises(UserError, match="no MatMulNBits/QDQ form"):
        quantized_linears(tmp_path)


@pytest.mark.parametrize("cfg", [dict(method="rtn", bits=4, group_size=32, sym=False),
                                 dict(method="rtn", bits=8, sym=False),
                                 dict(method="smoothquant", calib_samples=4)], ids=["w4g32-asym", "w8-asym", "w8a8"])
def test_outside_tool_decompresses_our_layout(cfg, tmp_path):
    """compressed-tensors' own decompressor turns our packed codes into the weights we evaluate with."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed (optional)")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    model = quantize(tiny_model(), QuantizeConfig(**cfg), CALIB)
    save_model(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(qc)  # its own schema accepts our quantization_config
    scheme = QuantizationScheme.model_validate(qc["config_groups"]["group_0"])
    compressor = BaseCompressor.get_value_from_registry(qc["format"])
    t = load_file(tmp_path / "model.safetensors")
    for name, m in quant_linears(model).items():
        local = {k[len(name) + 1:]: v for k, v in t.items() if k.startswith(name + ".")}
        w = compressor.decompress(local, scheme)["weight"]
        expected = m.record().dequantize()  # (out, in); c_attn's rows in GPTBigCode's per-head order
        if name.endswith("c_attn"):
            expected = rows_to_stock(expected, model.config.n_embd, model.config.n_head)
        torch.testing.assert_close(w.float(), expected, rtol=0, atol=1e-6)


def test_a_quantized_tied_head_counts_its_table_once_for_the_roofline(tmp_path):
    """The float token table of a quantized tied head is rebuilt from the head's codes: a decode step
    reads those codes once (as the head), so the table is not 'looked up' bytes apart from them."""
    from evalsuite.runner import gathered_bytes
    from tests.tiny_models import tiny_model

    model = tiny_model()
    position_table = model.transformer.wpe.weight.numel() * 4
    assert gathered_bytes(model) == position_table  # tied fp32: the head reads wte itself
    cfg = QuantizeConfig(method="rtn", bits=4, group_size=32, lm_head="int4")
    quantized = quantize(model, cfg)
    assert gathered_bytes(quantized) == position_table
    untied = tiny_model()
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    untied = quantize(untied, QuantizeConfig(method="rtn", bits=4, group_size=32, lm_head="int4"))
    table = untied.transformer.wte.weight
    assert gathered_bytes(untied) == position_table + table.numel() * table.element_size()
