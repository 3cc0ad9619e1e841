"""format gguf: the file llama.cpp's GPT-2 loader expects, read back with the gguf package."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")

from gguf import GGUFReader, quants  # noqa: E402

from compress.errors import PlanError, UserError  # noqa: E402
from compress.models import save_model  # noqa: E402
from compress.plan import parse_plan  # noqa: E402
from export.gguf import GgufExport, code_blocks, write_gguf  # noqa: E402
from export.gguf_runner import inspect, read_model, to_torch  # noqa: E402
from export.step import ExportConfig  # noqa: E402
from export.target import ExportTarget  # noqa: E402
from tests.tiny_models import tiny_model  # noqa: E402

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def plan_dict(model_dir, steps):
    return {"name": "t", "model": str(model_dir),
            "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64, "max_tokens": 600}},
            "eval": {"latency": None, "targets": ["host"]}, "steps": steps}


@pytest.fixture(scope="module")
def pruned(byte_tokenizer):
    """A tiny GPT-2 with a pruned MLP (n_inner 96, not 4 x 64) and the 257-token byte tokenizer."""
    return tiny_model(seed=4, vocab_size=len(byte_tokenizer), n_inner=96).eval()


def test_the_format_picks_the_target_class():
    cfg = ExportTarget.model_validate({"format": "gguf", "type": "q4_0"})
    assert type(cfg) is GgufExport and cfg.table_type == "q8_0" and cfg.slug() == "export-gguf"
    assert type(ExportTarget.model_validate({"quantize": "int4"})) is ExportConfig  # old plans: mapped, with a note
    assert ExportTarget.model_validate({"format": "gguf", "type": "f16"}).table_type == "f16"


@pytest.mark.parametrize("body,message", [
    ({"format": "gguf", "quantize": "int4"}, "quantize: only for format onnx"),
    ({"format": "gguf", "typo": 1}, "steps[0].export.typo: unknown key"),
    ({"format": "gguf", "type": "q5_k"}, "steps[0].export.type"),
    ({"format": "ggml"}, "unknown export format 'ggml' (known: gguf, onnx, tensorrt)"),
])
def test_bad_gguf_config_is_reported_at_its_key_path(trained_tiny, body, message):
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(trained_tiny[0], [{"export": body}]))
    assert message in str(e.value)


def test_rows_that_are_not_whole_blocks_are_refused_at_plan_time(tmp_path, byte_tokenizer):
    path = save_model(tiny_model(vocab_size=len(byte_tokenizer), n_embd=48, n_head=4), tmp_path / "m", byte_tokenizer)
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(path, [{"export": {"format": "gguf", "type": "q4_0"}}]))
    assert "steps[0].export.type: q4_0 stores rows in blocks of 32 but n_embd = 48" in str(e.value)
    assert "use type f16" in str(e.value)
    parse_plan(plan_dict(path, [{"export": {"format": "gguf", "type": "f16"}}]))  # f16 has no blocks


@pytest.mark.parametrize("t,tol", [("f32", 0), ("f16", 1e-3), ("q8_0", 1e-2), ("q4_0", 0.2)])
def test_metadata_shapes_and_weights_read_back(tmp_path, pruned, byte_tokenizer, t, tol):
    path = tmp_path / "m.gguf"
    how = write_gguf(pruned, {}, byte_tokenizer, path, t, "q8_0" if t == "q4_0" else t)
    m, reader = read_model(path)
    assert inspect(m) == []
    c = pruned.config
    assert m.params == {"arch": "gpt2", "n_ctx": c.n_positions, "n_embd": 64, "n_ff": 96, "n_layer": 2, "n_head": 4,
                        "n_head_kv": 4, "eps": pytest.approx(c.layer_norm_epsilon)}
    assert m.tensors["blk.1.ffn_down.weight"][1] == (96, 64) and "output.weight" not in m.tensors  # tied head
    assert m.tokens[:len(byte_tokenizer)] == [byte_tokenizer.convert_ids_to_tokens(i)
                                             for i in range(len(byte_tokenizer))]
    assert m.eos == byte_tokenizer.eos_token_id
    tensors = {x.name: x for x in reader.tensors}
    qkv = tensors["blk.0.attn_qkv.weight"]
    back = quants.dequantize(qkv.data, qkv.tensor_type).reshape(3 * 64, 64)
    want = pruned.transformer.h[0].attn.c_attn.weight.detach().numpy().T  # Conv1D [in, out] -> [out, in]
    assert np.abs(back - want).max() <= tol * np.abs(want).max()
    assert {h for n, h in how.items() if n.startswith("blk.")} == {"quantized" if t in ("q8_0", "q4_0") else "float"}
    assert how["position_embd.weight"] == "float"  # positions stay f32 / f16
    logits = to_torch(path)(IDS).logits
    ref = pruned(IDS).logits
    err = float((logits - ref).abs().max().detach())
    assert err == 0 if t == "f32" else err < 20 * tol + 1e-3


def _quantized(tmp_path, byte_tokenizer, bits, group, sym, head="keep"):
    from compress.quantization.api import quantize
    from compress.quantization.config import QuantizeConfig
    from compress.quantization.storage import read_linear_codes

    model = tiny_model(seed=5, vocab_size=len(byte_tokenizer))
    qmodel = quantize(model, QuantizeConfig(method="rtn", bits=bits, group_size=group, sym=sym, lm_head=head))
    path = save_model(qmodel, tmp_path / "q", byte_tokenizer)
    from compress.models import load_model

    return load_model(path), read_linear_codes(path)


@pytest.mark.parametrize("bits,group,t", [(4, 32, "q4_0"), (4, 64, "q4_0"), (8, "per-channel", "q8_0")])
def test_a_quantize_steps_codes_are_carried_bit_for_bit(tmp_path, byte_tokenizer, bits, group, t):
    model, records = _quantized(tmp_path, byte_tokenizer, bits, group, True)
    path = tmp_path / "m.gguf"
    how = write_gguf(model, records, byte_tokenizer, path, t, "q8_0")
    assert all(how[f"blk.{i}.{n}.weight"] == "codes" for i in range(2)
               for n in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"))
    tensors = {x.name: x for x in GGUFReader(str(path)).tensors}
    ql = records["transformer.h.1.mlp.c_fc"]
    raw = np.asarray(tensors["blk.1.ffn_up.weight"].data).reshape(ql.out_features, -1, 18 if t == "q4_0" else 34)
    body = raw[..., 2:]
    q = ql.q.numpy().reshape(ql.out_features, -1, 32)
    if t == "q4_0":
        assert np.array_equal(body & 0x0F, q[..., :16]) and np.array_equal(body >> 4, q[..., 16:])
    else:
        assert np.array_equal(body.view(np.int8).astype(np.int16), q.astype(np.int16) - 128)
    d = raw[..., :2].copy().view(np.float16)[..., 0]
    scales = np.repeat(ql.scales.numpy(), ql.group_size // 32, axis=1)
    assert np.array_equal(d, scales.astype(np.float16))  # the one rounding: the block scale is fp16
    back = quants.dequantize(tensors["blk.1.ffn_up.weight"].data, tensors["blk.1.ffn_up.weight"].tensor_type)
    want = ql.dequantize().numpy()
    assert np.abs(back - want).max() <= 1e-3 * np.abs(want).max()


def test_an_asymmetric_grid_is_requantized_and_said_so(tmp_path, byte_tokenizer):
    model, records = _quantized(tmp_path, byte_tokenizer, 4, 32, False)
    assert code_blocks(records["transformer.h.0.attn.c_attn"], "q4_0") is None
    how = write_gguf(model, records, byte_tokenizer, tmp_path / "m.gguf", "q4_0", "q8_0")
    assert how["blk.0.attn_qkv.weight"] == "quantized (from dequantized codes)"


def test_a_quantized_tied_head_is_the_token_table(tmp_path, byte_tokenizer):
    model, records = _quantized(tmp_path, byte_tokenizer, 8, "per-channel", True, head="int8")
    how = write_gguf(model, records, byte_tokenizer, tmp_path / "m.gguf", "q8_0", "q8_0")
    assert how["token_embd.weight"] == "codes"
    err = float((to_torch(tmp_path / "m.gguf")(IDS).logits - model(IDS).logits).abs().max())
    assert err < 1e-2


def test_layers_of_different_widths_are_refused(tmp_path, pruned, byte_tokenizer):
    import copy

    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(pruned)
    model.transformer.h[1].mlp.c_fc = Conv1D(64, 64)
    with pytest.raises(UserError, match="layer 1 has FFN width 64.*same widths in every layer"):
        write_gguf(model, {}, byte_tokenizer, tmp_path / "m.gguf", "f16", "f16")


def test_a_file_with_wrong_metadata_is_what_llama_cpp_refuses(tmp_path, pruned, byte_tokenizer):
    import gguf

    path = tmp_path / "bad.gguf"
    write_gguf(pruned, {}, byte_tokenizer, path, "f32", "f32")
    m, _ = read_model(path)
    m.params["n_ff"] = 4 * 64  # what llama.cpp's converter writes for a pruned MLP (issue 25)
    assert "tensor 'blk.0.ffn_up.weight' has wrong shape; expected [64, 256], got [64, 96]" in inspect(m)
    assert gguf.GGUFReader(str(path)).fields["gpt2.feed_forward_length"].contents() == 96


def test_export_step_in_a_plan(tmp_path, trained_tiny):
    from compress.pipeline import run_plan

    plan = parse_plan(plan_dict(trained_tiny[0], [{"export": {"format": "gguf", "type": "q8_0"}}]))
    result = run_plan(plan, tmp_path / "run", progress=False)
    step = next(p for p in (tmp_path / "run").iterdir() if p.name.endswith("export-gguf"))
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["file"] == "model.gguf" and "not llama.cpp" in v["runtime"]
    assert v["ppl_rel_diff"] < 0.02 and v["top1_agreement"] > 0.95
    assert (step / "run_llama_cpp.sh").is_file() and (step / "tokenizer.json").is_file()
    assert json.loads((step / "config.json").read_text())["n_ctx"] == 128
    info = json.loads((step / "step.json").read_text())
    assert info["backend"] == "llama.cpp" and "GGUF q8_0" in info["summary"]
    assert [r.status for r in result.records] == ["ran", "ran"]


def test_quantize_then_gguf_carries_the_steps_codes_in_a_plan(tmp_path, trained_tiny):
    from compress.pipeline import run_plan

    steps = [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32, "lm_head": "int4"}},
             {"export": {"format": "gguf", "type": "q4_0", "embedding_type": "q4_0"}}]
    result = run_plan(parse_plan(plan_dict(trained_tiny[0], steps)), tmp_path / "run", progress=False)
    assert [r.status for r in result.records] == ["ran", "ran", "ran"]
    step = tmp_path / "run" / "02-export-gguf"
    info = json.loads((step / "step.json").read_text())
    assert "8 of 9 quantized layers carried code for code" not in info["summary"]
    assert "9 of 9 quantized layers carried code for code" in info["summary"]  # the tied head too
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["reference"].startswith("torch quantized model (the same weights)")
    assert v["limits"]["max_ppl_rel"] == 0.01 and v["ppl_rel_diff"] < 0.01


def test_saved_gpt2_configs_carry_n_ctx_for_llama_cpps_converter(tmp_path, pruned):
    """convert_hf_to_gguf.py reads hparams["n_ctx"] (KeyError without it; transformers no longer writes it)."""
    from compress.models import load_model

    path = save_model(pruned, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 128
    assert load_model(path).config.n_positions == 128
