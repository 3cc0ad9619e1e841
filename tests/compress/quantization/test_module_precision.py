"""Per-module precision (quantize overrides): resolution without a model, plan-time errors, the methods
applying it, storage and exact size accounting."""

import os

import pytest
import torch
from safetensors import safe_open
from transformers.pytorch_utils import Conv1D

from compress.errors import PlanError, UserError
from compress.models import load_model, save_model
from compress.plan import parse_plan
from compress.quantization import QuantizeConfig, quantize, quantized_bytes
from compress.quantization.footprint import checkpoint_tensors
from compress.quantization.modules import quant_linears
from tests.tiny_models import tiny_model

CALIB = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
MIXED = {"h.0.*": {"bits": 8}, "h.*.mlp.c_proj": {"bits": 8, "group_size": "per-channel"},
         "h.1.attn.c_attn": {"bits": 16}}


def _plan(step, n_layer=2, n_embd=64):
    pre = {"n_layer": n_layer, "n_embd": n_embd, "n_head": 2, "tokens": 5000}
    return {"name": "t", "model": {"pretrain": pre},
            "data": {"eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32},
                     "train": {"builtin": "python-docs", "max_chars": 50000}},
            "steps": [{"quantize": step}]}


def _problems(raw):
    with pytest.raises(PlanError) as e:
        parse_plan(raw)
    return e.value.problems


def test_precision_of_resolves_patterns_in_order_without_a_model():
    cfg = QuantizeConfig(method="gptq", bits=4, group_size=32, lm_head="keep", overrides=MIXED)
    assert cfg.precision_of("h.1.attn.c_proj") == (4, 32)  # no pattern: the step's grid
    assert cfg.precision_of("h.0.attn.c_attn") == (8, 32)  # bits 8, the step's explicit group_size
    assert cfg.precision_of("transformer.h.0.mlp.c_proj") == (8, None)  # the later key wins
    assert cfg.precision_of("h.1.attn.c_attn") == (16, None)  # float
    assert cfg.precision_of("lm_head") == (16, None)  # lm_head: keep
    assert QuantizeConfig(method="rtn", overrides={"lm_head": {"bits": 8}}).precision_of("lm_head") == (8, None)
    assert QuantizeConfig(method="rtn", lm_head="int4").precision_of("lm_head") == (4, 128)
    assert len({cfg, QuantizeConfig(method="gptq", bits=4, group_size=32, overrides=MIXED)}) == 1  # hashable
    grids = cfg.module_precisions(2)
    assert len(grids) == 9 and sum(b == 8 for b, _ in grids.values()) == 5
    assert cfg.slug() == "quantize-gptq-w4g32-mixed"


def test_overrides_leave_old_hashes_alone():
    from compress.step_inputs import StepInputs

    inputs = StepInputs(declared=frozenset({"seed"}), _seed=0)
    plain = QuantizeConfig(method="rtn", bits=4)
    assert "overrides" not in plain.describe()
    from compress.hashing import digest

    old = plain.model_dump(mode="json")
    old.pop("overrides")
    assert plain.content_hash("p", inputs) == digest("p", "quantize", old, inputs.key())
    assert QuantizeConfig(method="rtn", bits=4, overrides={"h.0.*": {"bits": 8}}).content_hash("p", inputs) != \
        plain.content_hash("p", inputs)


@pytest.mark.parametrize("step,text", [
    ({"method": "smoothquant", "overrides": {"h.0.*": {"bits": 16}}}, "per-module precision is for rtn/gptq/awq"),
    ({"method": "rtn", "overrides": {"h.0.mlp.cfc": {"bits": 8}}}, "did you mean 'h.0.mlp.c_fc'"),
    ({"method": "rtn", "overrides": {"h.0.*": {"bits": 16, "group_size": 32}}}, "remove its group_size"),
    ({"method": "rtn", "overrides": {"h.0.*": {"bits": 2}}}, "Input should be 4, 8 or 16"),
    ({"method": "rtn", "lm_head": "int8", "overrides": {"lm_head": {"bits": 4}}}, "set it in one place"),
    ({"method": "rtn", "overrides": {"h.0.*": {"bits": 8, "group": 32}}}, "unknown key; did you mean 'group_size'"),
])
def test_bad_overrides_are_plan_errors_at_their_key(step, text):
    (problem,) = _problems(_plan(step))
    assert problem.startswith("steps[0].quantize.overrides") and text in problem


def test_overrides_are_checked_against_the_planned_shape():
    # a 2-block model has no h.5; the did-you-mean lists the names it has
    (problem,) = _problems(_plan({"method": "rtn", "group_size": 32, "overrides": {"h.5.mlp.c_fc": {"bits": 8}}}))
    assert problem == ("steps[0].quantize.overrides: pattern 'h.5.mlp.c_fc' matches no module of a 2-block model; "
                       "did you mean 'h.1.mlp.c_fc' or 'h.0.mlp.c_fc'?")
    # group 64 does not divide mlp.c_fc's input (n_embd 96)
    (problem,) = _problems(_plan({"method": "rtn", "bits": 4, "group_size": 32,
                                  "overrides": {"h.*.mlp.c_fc": {"bits": 4, "group_size": 64}}}, n_embd=96))
    assert problem == ("steps[0].quantize.overrides: 'h.*.mlp.c_fc': group_size 64 does not divide the input width "
                       "of h.0.mlp.c_fc (96), h.1.mlp.c_fc (96); group_size per-channel fits any width")
    # the step-wide group is not checked where overrides decide every module it would apply to
    per_channel = {"bits": 4, "group_size": "per-channel"}
    plan = parse_plan(_plan({"method": "rtn", "bits": 4, "group_size": 64,
                             "overrides": {"h.*.attn.*": per_channel, "h.*.mlp.c_fc": per_channel}}, n_embd=96))
    assert plan.steps[0].overrides


def test_quantize_refuses_overrides_the_loaded_model_does_not_fit():
    cfg = QuantizeConfig(method="rtn", group_size=32, overrides={"h.3.*": {"bits": 8}})
    with pytest.raises(UserError, match="matches no module of a 2-block model"):
        quantize(tiny_model(), cfg)


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_each_method_applies_the_overrides_and_reloads_exactly(method, tmp_path):
    extra = {} if method == "rtn" else {"calib_samples": 4, "calib_seq_len": 64}
    extra |= {"search_grid": 4} if method == "awq" else {}
    cfg = QuantizeConfig(method=method, bits=4, group_size=32, overrides={**MIXED, "lm_head": {"bits": 8}}, **extra)
    model = quantize(tiny_model(), cfg, CALIB)
    got = {n.removeprefix("transformer."): (m.bits, m.group_size) for n, m in quant_linears(model).items()}
    assert got == {"h.0.attn.c_attn": (8, 32), "h.0.attn.c_proj": (8, 32), "h.0.mlp.c_fc": (8, 32),
                   "h.0.mlp.c_proj": (8, 256), "h.1.attn.c_proj": (4, 32), "h.1.mlp.c_fc": (4, 32),
                   "h.1.mlp.c_proj": (8, 256), "lm_head": (8, 32)}  # per channel = one group of in_features
    assert isinstance(model.transformer.h[1].attn.c_attn, Conv1D)  # kept float
    save_model(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, load_model(tmp_path)(IDS).logits)
    c = model.config
    assert os.path.getsize(tmp_path / "model.safetensors") == quantized_bytes(
        cfg, c.n_layer, c.n_embd, c.n_inner, c.vocab_size, c.n_positions)


@pytest.mark.parametrize("kw,tied", [
    (dict(method="rtn", bits=4, group_size=32, overrides={"h.1.*": {"bits": 16}}), True),
    (dict(method="rtn", bits=4, group_size=32, lm_head="int4"), False),
    (dict(method="rtn", bits=8, sym=False, overrides={"h.0.mlp.c_fc": {"bits": 4, "group_size": 64}}), True),
    (dict(method="smoothquant", calib_samples=4, calib_seq_len=64, lm_head="int8"), False),
])
def test_quantized_bytes_is_the_file_size(kw, tied, tmp_path):
    cfg = QuantizeConfig(**kw)
    model = tiny_model(n_inner=96)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    save_model(quantize(model, cfg, CALIB), tmp_path)
    f = tmp_path / "model.safetensors"
    with safe_open(f, "pt") as st:
        real = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
    c = model.config
    assert {n: s for n, _, s in checkpoint_tensors(cfg, c.n_layer, c.n_embd, 96, c.vocab_size, c.n_positions,
                                                    tied)} == real
    assert os.path.getsize(f) == quantized_bytes(cfg, c.n_layer, c.n_embd, 96, c.vocab_size, c.n_positions, tied)


def test_quantized_bytes_orders_mixed_plans_by_size():
    shape = dict(n_layer=6, n_embd=384, n_inner=1536, vocab_size=50257, n_positions=1024)
    int4 = quantized_bytes(QuantizeConfig(method="gptq", bits=4, lm_head="int4"), **shape)
    int8 = quantized_bytes(QuantizeConfig(method="gptq", bits=8, lm_head="int8"), **shape)
    mixed = quantized_bytes(QuantizeConfig(method="gptq", bits=4, lm_head="int4",
                                           overrides={"h.0.*": {"bits": 8}, "h.5.*": {"bits": 8}}), **shape)
    assert int4 < mixed < int8

