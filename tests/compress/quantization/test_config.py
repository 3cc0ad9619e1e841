"""Plan-time errors of the quantize step, reported with their key paths before any model loads."""

import pytest

from compress.errors import PlanError
from compress.plan import parse_plan
from compress.quantization import QuantizeConfig
from compress.quantization import config as qconfig


def _plan(*steps, n_embd=96, train=True):
    data = {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32}}
    if train:
        data["train"] = {"builtin": "python-docs", "max_chars": 50000}
    return {"name": "t", "model": {"pretrain": {"n_layer": 1, "n_embd": n_embd, "n_head": 2, "tokens": 5000}},
            "data": data, "steps": [{"quantize": s} for s in steps]}


def _problems(raw):
    with pytest.raises(PlanError) as e:
        parse_plan(raw)
    return e.value.problems


def test_good_quantize_steps_parse():
    plan = parse_plan(_plan({"method": "gptq", "bits": 4, "group_size": 32, "lm_head": "int8"}))
    step = plan.steps[0]
    assert isinstance(step, QuantizeConfig) and step.weight_bits == 4 and step.group_for(4) == 32
    assert step.slug() == "quantize-gptq-w4g32"


def test_method_defaults():
    assert QuantizeConfig(method="smoothquant").weight_bits == 8
    assert QuantizeConfig(method="rtn").group_for(4) == 128 and QuantizeConfig(method="rtn").group_for(8) is None
    assert QuantizeConfig(method="bnb-nf4").group_for(4) is None


@pytest.mark.parametrize("step,where,text", [
    ({"method": "smoothquant", "bits": 4}, "steps[0].quantize.bits", "method smoothquant supports bits 8, not 4"),
    ({"method": "bnb-nf4", "bits": 8}, "steps[0].quantize.bits", "supports bits 4"),
    ({"bits": 3}, "steps[0].quantize.bits", "Input should be 4 or 8"),
    ({"method": "smoothquant", "alpha": 1.5}, "steps[0].quantize.alpha", "less than or equal to 1"),
    ({"method": "smoothquant", "alpha": -0.1}, "steps[0].quantize.alpha", "greater than or equal to 0"),
    ({"method": "rtn", "alpha": 0.5}, "steps[0].quantize.alpha", "applies to method smoothquant only"),
    ({"method": "rtn", "act_order": True}, "steps[0].quantize.act_order", "applies to method gptq only"),
    ({"method": "bnb-int8", "group_size": 64}, "steps[0].quantize.group_size", "bitsandbytes' own blocks"),
    ({"method": "smoothquant", "sym": False}, "steps[0].quantize.sym", "asymmetric weights are for rtn/gptq"),
    ({"method": "dynamic-int8", "lm_head": "int8"}, "steps[0].quantize.lm_head", "rtn, gptq, smoothquant and awq only"),
    ({"method": "int3"}, "steps[0].quantize.method", "Input should be"),
    ({"bitz": 4}, "steps[0].quantize.bitz", "unknown key"),
])
def test_bad_values_name_their_key(step, where, text):
    (problem,) = _problems(_plan(step))
    assert problem.startswith(where + ":") and text in problem


def test_group_size_must_divide_the_input_width():
    (problem,) = _problems(_plan({"bits": 4, "group_size": 64}, n_embd=96))
    assert problem == ("steps[0].quantize.group_size: 64 does not divide n_embd 96 (input of attn.c_attn, "
                       "attn.c_proj, mlp.c_fc) made by model.pretrain (1x96, 2 heads); group_size 32 divides it")
    (problem,) = _problems(_plan({"bits": 8, "lm_head": "int4"}, n_embd=96))
    assert problem.startswith("steps[0].quantize.lm_head: its group_size 128 does not divide n_embd 96")


def test_group_size_check_covers_a_quantized_lm_head():
    # 8-bit blocks are per channel by default; the int4 head uses groups of 128, which 96 cannot hold
    problems = QuantizeConfig(bits=8, lm_head="int4").width_problems(qconfig.layer_widths(96, None))
    assert problems == ["group_size 128 does not divide the input width 96 of lm_head"]


def test_bnb_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setattr(qconfig, "package_installed", lambda module: False)
    (problem,) = _problems(_plan({"method": "bnb-nf4"}))
    assert problem.startswith("steps[0].quantize.method:") and "pip install -e '.[bnb]'" in problem


def test_calibrated_methods_need_training_text():
    raw = _plan({"method": "gptq", "group_size": 32}, train=False)
    raw["model"] = "gpt2"  # a carried hub config: no data.train needed for the model itself
    assert _problems(raw) == [
        "steps[0].quantize.method: gptq calibrates on data.train; set data.train in the plan"]


@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4", "dynamic-int8"])
def test_non_exportable_method_before_export_is_refused(method):
    if method.startswith("bnb-") and not qconfig.package_installed("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed")
    raw = _plan({"method": method})
    raw["steps"].append({"export": {"format": "onnx"}})
    assert _problems(raw) == [f"steps[1].export: the model quantized by steps[0].quantize (method {method}) has "
                              "no form the onnx export writes; use rtn/gptq/smoothquant/awq/ort-int4/ort-int8/"
                              "ort-dynamic-int8 before it"]
    raw["steps"][0] = {"quantize": {"method": "gptq", "group_size": 32}}
    assert parse_plan(raw).steps[1].format == "onnx"


def test_quantizing_twice_is_refused():
    (problem,) = _problems(_plan({"bits": 8}, {"bits": 8}))
    assert problem == "steps[1].quantize: the model is already quantized by steps[0].quantize"


def _after(step: dict, quantize: dict, n_embd: int = 256) -> dict:
    raw = _plan(quantize, n_embd=n_embd)
    raw["model"]["pretrain"].update(n_head=4)
    raw["steps"].insert(0, step)
    return raw


def test_width_check_follows_earlier_prune_steps():
    # 256 wide, n_inner 1024; mlp 0.3 keeps 717 channels, rounded to 704 (round_to 64), exact with round_to 1
    assert parse_plan(_after({"prune": {"mlp": 0.3}}, {"bits": 4, "group_size": 64})).steps[1].group_size == 64
    (problem,) = _problems(_after({"prune": {"mlp": 0.3, "round_to": 1}}, {"bits": 4, "group_size": 64}))
    assert problem == ("steps[1].quantize.group_size: 64 does not divide n_inner 717 (input of mlp.c_proj) made by "
                       "steps[0].prune (mlp 0.3); group_size per-channel fits any width, or round_to 64")
    (problem,) = _problems(_after({"prune": {"mlp": 0.3}}, {"bits": 4, "group_size": 128}))
    assert problem == ("steps[1].quantize.group_size: 128 does not divide n_inner 704 (input of mlp.c_proj) made "
                       "by steps[0].prune (mlp 0.3); group_size 64 or 32 divide it, or round_to 128")


def test_width_check_sees_through_a_distill():
    # a distil keeps its student's shape: the 96-wide model still meets groups of 64
    (problem,) = _problems(_after({"distill": {"tokens": 4096}}, {"bits": 4, "group_size": 64}, n_embd=96))
    assert problem.startswith("steps[1].quantize.group_size: 64 does not divide n_embd 96")
    (problem,) = _problems(_after({"prune": {"mlp": 0.5}}, {"bits": 4, "group_size": 64}, n_embd=96))
    assert problem.startswith("steps[1].quantize.group_size: 64 does not divide n_embd 96")


def test_the_error_names_the_prune_step_that_made_the_width_and_what_would_work():
    # the README's plan before the fix: gpt2 (12 heads of 64), width 0.25 -> 9 heads, n_embd 576
    raw = _plan({"method": "gptq", "bits": 4, "group_size": 128})
    raw["model"] = "gpt2"
    raw["steps"].insert(0, {"prune": {"importance": "taylor", "mlp": 0.5, "width": 0.25}})
    assert _problems(raw) == [
        "steps[1].quantize.group_size: 128 does not divide n_embd 576 (input of attn.c_attn, attn.c_proj, mlp.c_fc) "
        "made by steps[0].prune (mlp 0.5, width 0.25); group_size 64 or 32 divide it, or round_to {n_embd: 128} "
        "(n_embd 512), or width 0.2 (10 heads, n_embd 640) or 0.3 (8 heads, n_embd 512)"]
    raw["steps"][0]["prune"]["width"] = 0.5
    assert parse_plan(raw).steps[1].group_size == 128
