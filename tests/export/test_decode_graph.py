"""The fused decode graph (export.decode_graph) and its runner: the same logits as the plain graph and
torch (prefill, decode, several positions after a cache, rollback), greedy tokens identical, for fp32,
ORT's int4/int8 quantizer and the quantize step's integers; padding is refused."""

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compress.errors import UserError
from compress.models import load_model, save_model
from evalsuite.runner import TorchRunner
from evalsuite.samples import greedy
from evalsuite.speculative import SpeculativeSettings, speculative_generate, turn_taking
from export.decode_graph import DECODE_FILE, build_decode_graph, build_for_export, unsupported
from export.onnx import save_onnx
from export.ort_decode_runner import OrtDecodeRunner
from export.ort_runner import OrtRunner, open_runner
from export.step import ExportConfig, build_graph
from tests.tiny_models import tiny_model

ATOL = 1e-4  # fp32 logits, the bound


def _export_both(model, cfg: ExportConfig, out, records=None):
    """model.onnx and model_decode.onnx of `model` through the step's passes, config.json beside."""
    import logging

    records = records or {}
    out.mkdir()
    graph, _ = build_graph(cfg, model, records, logging.getLogger("test"))
    save_onnx(graph, out / "model.onnx")
    decode, done = build_for_export(cfg, model, records)
    save_onnx(decode, out / DECODE_FILE)
    (out / "config.json").write_text(model.config.to_json_string())
    return OrtRunner(out / "model.onnx", threads=1), OrtDecodeRunner(out / DECODE_FILE, threads=1), done


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, n_positions=64)


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    return _export_both(model, ExportConfig(), tmp_path_factory.mktemp("fp32") / "x")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    np.testing.assert_allclose(a.float().numpy(), b.float().numpy(), atol=atol, rtol=0)


def test_graph_is_gpt2_with_fused_attention(model):
    graph = build_decode_graph(model)
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert "GroupQueryAttention" in ops and not ops & {"Softmax", "Concat", "Where"}  # no unfused attention
    names = {n.name for n in graph.graph.node if n.op_type == "MatMul"}
    assert {"/transformer/h.0/attn/c_attn/MatMul", "/transformer/h.1/mlp/c_proj/MatMul", "/lm_head/MatMul"} <= names


def test_prefill_decode_and_a_multi_token_call_match_torch_and_the_plain_graph(model, fp32):
    plain, fused, _ = fp32
    ref = TorchRunner(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    want, _ = ref.forward(ids)  # (B, 24, V)
    got, past = fused.forward(ids[:, :10])  # prefill
    _close(got, want[:, :10])
    _close(got, plain.forward(ids[:, :10])[0])
    for t in range(10, 14):  # decode steps, written into the same buffers
        got, past = fused.forward(ids[:, t:t + 1], past)
        _close(got, want[:, t:t + 1])
    one = ids[:1]  # several positions after a cache: speculative verification (batch 1 in one call)
    _, p1 = fused.forward(one[:, :14])
    got, p1 = fused.forward(one[:, 14:20], p1)
    _close(got, want[:1, 14:20])
    got, past = fused.forward(ids[:, 14:20], past)  # batch 2: position by position, the same logits
    _close(got, want[:, 14:20])
    assert past.length == 20


def test_last_logits_and_cache_growth(model, fp32):
    fused = OrtDecodeRunner(fp32[1].path, threads=1, slack=4)
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    want, _ = TorchRunner(model).forward(ids)
    last, past = fused.forward_last(ids[:, :3])
    assert last.shape == (1, 1, model.config.vocab_size)
    _close(last, want[:, 2:3])
    capacity = past.capacity
    for t in range(3, 40):  # past the first capacity: the buffers grow, keeping what they hold
        last, past = fused.forward_last(ids[:, t:t + 1], past)
    assert past.capacity > capacity
    _close(last, want[:, 39:40])
    with pytest.raises(UserError, match="exceed the model's 64"):
        fused.forward(torch.zeros((1, 30), dtype=torch.long), past)


def test_truncate_then_continue_equals_a_fresh_cache(model, fp32):
    _, fused, _ = fp32
    ids = torch.tensor([[3, 9, 27, 81, 5, 6, 7]])
    _, past = fused.forward(ids)
    cut = fused.truncate_past(past, 4)
    after_cut, _ = fused.forward(torch.tensor([[11, 12]]), cut)
    _, fresh = fused.forward(ids[:, :4])
    after_fresh, _ = fused.forward(torch.tensor([[11, 12]]), fresh)
    _close(after_cut, after_fresh, 1e-6)


def test_padded_batches_are_refused_with_a_pointer_to_the_plain_graph(fp32):
    _, fused, _ = fp32
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(UserError, match="takes no padding; run left-padded batches on model.onnx"):
        fused.forward(torch.tensor([[0, 5, 6], [4, 5, 6]]), attention_mask=mask)
    logits, _ = fused.forward(torch.tensor([[4, 5, 6]]), attention_mask=torch.ones(1, 3))  # all ones: fine
    assert logits.shape[1] == 3


@pytest.mark.parametrize("quantize,op,lookup", [("int4", "MatMulNBits", "GatherBlockQuantized"),
                                                ("int8", "MatMulNBits", "GatherBlockQuantized"),
                                                ("dynamic-int8", "MatMulInteger", "DequantizeLinear")])
def test_ort_quantizer_graphs_match_the_plain_graph_greedily(model, tmp_path, quantize, op, lookup):
    from compress.quantization import QuantizeConfig
    from compress.quantization import quantize as quantize_model

    options = {"allow_outliers": True} if quantize == "dynamic-int8" else {"group_size": 32}
    qmodel = quantize_model(copy.deepcopy(model), QuantizeConfig(method=f"ort-{quantize}", **options))
    plain, fused, done = _export_both(qmodel, ExportConfig(accuracy_level=0), tmp_path / "q")
    assert done["quantized_ops"][op] == 9 and lookup in done["tied_embedding"]
    ids = torch.tensor([[5, 17, 99, 3, 40, 41]])
    a, pa = plain.forward(ids)
    b, pb = fused.forward(ids)
    _close(a, b)
    _close(plain.forward(ids[:, :1], pa)[0], fused.forward(ids[:, :1], pb)[0])
    assert greedy(fused, [5, 17, 99], 20) == greedy(plain, [5, 17, 99], 20)


def test_quantize_step_integers_give_the_plain_graphs_logits(model, tmp_path):
    from compress.quantization import QuantizeConfig, quantize, quantized_linears

    qdir = save_model(quantize(copy.deepcopy(model), QuantizeConfig(method="rtn", bits=4, group_size=32)),
                      tmp_path / "quantized")
    qmodel = load_model(qdir)
    plain, fused, done = _export_both(qmodel, ExportConfig(accuracy_level=0), tmp_path / "onnx",
                                      quantized_linears(qdir))
    assert done["from_quantize_step"]["MatMulNBits"] == 8
    ids = torch.tensor([[5, 17, 99, 3, 40, 41]])
    _close(fused.forward(ids)[0], plain.forward(ids)[0])
    _close(fused.forward(ids)[0], TorchRunner(qmodel).forward(ids)[0], 1e-3)
    assert greedy(fused, [7, 8], 20) == greedy(plain, [7, 8], 20)


def test_speculative_greedy_through_the_fused_runner_is_the_targets_greedy(model, fp32, perturbed, tmp_path):
    _, target, _ = fp32
    _, draft, _ = _export_both(perturbed(model, 0.3), ExportConfig(), tmp_path / "draft")
    for prompt in ([7], list(range(40, 61))):
        want = greedy(TorchRunner(model), prompt, 20)
        assert greedy(target, prompt, 20) == want
        for k in (1, 4):
            got = speculative_generate(target, draft, prompt, SpeculativeSettings(k=k, max_new_tokens=20))
            assert got.tokens == want, (k, prompt)
    paired = turn_taking(target)  # the decode graph's non-spinning session: the same graph, the same text
    assert isinstance(paired, OrtDecodeRunner) and paired.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    got = speculative_generate(paired, turn_taking(draft), [7], SpeculativeSettings(k=4, max_new_tokens=20))
    assert got.tokens == greedy(TorchRunner(model), [7], 20)


def test_open_runner_prefers_the_decode_graph_on_cpu(fp32):
    plain, fused, _ = fp32
    folder = fused.path.parent
    assert isinstance(open_runner(folder), OrtDecodeRunner)
    assert isinstance(open_runner(folder / "model.onnx"), OrtDecodeRunner)  # what the plan runner passes
    (folder / "other.onnx").write_bytes((folder / "model.onnx").read_bytes())
    assert isinstance(open_runner(folder / "other.onnx"), OrtRunner)  # an explicit other file is that file


def test_configs_the_graph_cannot_express_are_skipped_with_the_reason(model):
    _, done = build_for_export(ExportConfig(fp16=True), model, {})
    assert "fp16 is for GPU providers" in done["skipped"]
    graph, _ = build_for_export(ExportConfig(opset=14), model, {})  # LayerNormalization needs opset 17
    assert {o.domain: o.version for o in graph.opset_import}[""] == 17
    odd = copy.deepcopy(model)
    odd.config.activation_function = "swish"
    assert "activation 'swish'" in unsupported(odd)


def test_a_decode_graph_that_fails_validation_fails_the_step(tmp_path, trained_tiny, monkeypatch):
    """Both files are validated: a wrong decode graph (here one weight negated) stops the step."""
    import json

    import export.decode_graph as decode_graph
    from compress.plan import parse_plan
    from compress.pipeline import run_plan
    from onnx import numpy_helper

    real = decode_graph.build_for_export

    def wrong(cfg, model, records):
        graph, done = real(cfg, model, records)
        w = next(t for t in graph.graph.initializer if t.name == "transformer.h.0.mlp.c_fc.weight")
        w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
        return graph, done

    monkeypatch.setattr(decode_graph, "build_for_export", wrong)
    plan = parse_plan({"name": "t", "model": str(trained_tiny[0]), "steps": [{"export": {"format": "onnx"}}],
                       "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 64,
                                         "max_tokens": 300}},
                       "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0}}})
    with pytest.raises(UserError, match=r"export validation failed: model_decode\.onnx: max \|logit diff\|"):
        run_plan(plan, tmp_path / "run", progress=False)
    v = json.loads((tmp_path / "run" / ".01-export-onnx.tmp" / "validation.json").read_text())
    assert v["passed"] and v["decode_graph"]["passed"] is False  # model.onnx held, the decode graph did not


def test_optimum_still_reads_model_onnx_from_a_dir_holding_both(model, fp32):
    """The decode graph beside it does not change what optimum loads: model.onnx, the same greedy tokens."""
    from optimum.onnxruntime import ORTModelForCausalLM

    plain, fused, _ = fp32
    optimum_model = ORTModelForCausalLM.from_pretrained(fused.path.parent, use_io_binding=False)
    assert Path(optimum_model.path).name == "model.onnx"  # not model_decode.onnx
    prompt = [5, 17, 99, 3]
    ids = torch.tensor([prompt])
    got = optimum_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
    assert got[0, len(prompt):].tolist() == greedy(fused, prompt, 12)
