"""The factorize step in plans: plan-time refusals (rank 0, ranks at break-even, steps that cannot take
factors), and factorize -> distill -> export onnx end to end, the ONNX holding two MatMuls per projection, and
factorize -> distill -> quantize gptq -> export onnx, one MatMulNBits per factor."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

from compress.errors import PlanError
from compress.plan import parse_plan
from compress.pipeline import run_plan


def plan_dict(model, steps, train=True):
    from tests.conftest import text_plan

    return text_plan(model, steps, train)


@pytest.mark.parametrize("body,message", [
    ({"rank": 0}, r"steps\[0\]\.factorize\.rank: .*rank 0 keeps nothing"),
    ({"rank": 32}, r"steps\[0\]\.factorize\.rank: rank 32 is not below the break-even rank of attn\.c_proj "
                   r"\[64, 64\]: 64\*64/\(64\+64\) = 32\.0: .* use rank 31 or less"),
    ({"params": 1.0}, r"steps\[0\]\.factorize\.params: .*below 1"),
    ({"energy": 0.0}, r"steps\[0\]\.factorize\.energy: .*above 0"),
    ({"method": "svd"}, r"exactly one of rank, params, energy \(got none\)"),
    ({"rank": 8, "params": 0.5}, r"exactly one of rank, params, energy \(got rank, params\)"),
    ({"rank": 8, "method": "qr"}, r"steps\[0\]\.factorize\.method"),
])
def test_bad_input_is_refused_at_plan_time(random_tiny_dir, body, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(plan_dict(random_tiny_dir, [{"factorize": body}]))


def test_rank_at_break_even_names_every_layer_in_one_line(random_tiny_dir):
    with pytest.raises(PlanError) as e:
        parse_plan(plan_dict(random_tiny_dir, [{"factorize": {"rank": 48}}]))
    lines = [line for line in str(e.value).splitlines() if "factorize" in line]
    assert len(lines) == 1 and "attn.c_attn [64, 192]: 64*192/(64+192) = 48.0" in lines[0]
    assert "mlp.c_fc [64, 256]" not in lines[0]  # 47 < 51.2: fine there
    parse_plan(plan_dict(random_tiny_dir, [{"factorize": {"rank": 31}}], train=True))


@pytest.mark.parametrize("after,message", [
    ({"quantize": {"method": "smoothquant"}}, r"steps\[1\]\.quantize\.method: smoothquant takes dense projections "
                                              r"and steps\[0\]\.factorize made low-rank factors"),
    ({"prune": {"mlp": 0.5}}, r"steps\[1\]\.prune: prune slices dense projections"),
    ({"sparsify": {"pattern": "2:4", "method": "magnitude"}}, r"steps\[1\]\.sparsify: sparsify prunes dense"),
    ({"factorize": {"rank": 4}}, r"steps\[1\]\.factorize: the model is already factorized by steps\[0\]"),
])
def test_steps_that_cannot_take_factors_are_refused_at_plan_time(random_tiny_dir, after, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(plan_dict(random_tiny_dir, [{"factorize": {"method": "svd", "rank": 8}}, after]))


def test_factorize_distill_export_onnx_end_to_end(tmp_path, random_tiny_dir):
    plan = parse_plan(plan_dict(random_tiny_dir, [
        {"factorize": {"method": "whiten", "params": 0.6, "calib_tokens": 1024, "seq_len": 64}},
        {"distill": {"tokens": 2048, "batch_tokens": 512, "seq_len": 64, "eval_tokens": 0, "warmup_steps": 1,
                     "checkpoint_every": 1000}},
        {"export": {"format": "onnx", "validation": {"tokens": 256, "windows": 1}}}]))
    result = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in result.records] == ["ran"] * 4
    run = tmp_path / "run"
    info = json.loads((run / "01-factorize-whiten-p60" / "step.json").read_text())["info"]
    ranks = {name: v["rank"] for name, v in info["layers"].items()}
    assert len(ranks) == 8 and info["projection_weights_after"] <= 0.6 * info["projection_weights_before"]
    distilled = json.loads((run / "02-distill" / "model" / "config.json").read_text())
    assert distilled["gpt2_edge"]["lowrank"]["ranks"] == ranks  # distill trained the factors, kept the ranks
    step = run / "03-export-onnx"
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"] and v["max_abs_logit_diff"] < 1e-3
    graph = onnx.load(str(step / "model.onnx"))
    shapes = {t.name: tuple(numpy_helper.to_array(t).shape) for t in graph.graph.initializer}
    matmul_weights = [shapes[i] for n in graph.graph.node if n.op_type == "MatMul" for i in n.input if i in shapes]
    for name, r in ranks.items():
        m, n = info["layers"][name]["shape"]
        assert (m, r) in matmul_weights and (r, n) in matmul_weights, name  # two MatMuls, not a product
    assert not any(s in matmul_weights for s in ((64, 192), (64, 256), (256, 64)))  # no dense projection
    assert "skipped" in v["decode_graph"]  # the fused decode graph takes stock Conv1D layers only


def test_factorize_distill_quantize_export_onnx_end_to_end(tmp_path, random_tiny_dir):
    plan = parse_plan(plan_dict(random_tiny_dir, [
        {"factorize": {"method": "whiten", "params": 0.7, "rank_multiple": 32, "layers": ["mlp.c_fc", "mlp.c_proj"],
                       "calib_tokens": 1024, "seq_len": 64}},
        {"distill": {"tokens": 1024, "batch_tokens": 512, "seq_len": 64, "eval_tokens": 0, "warmup_steps": 1,
                     "checkpoint_every": 1000}},
        {"quantize": {"method": "gptq", "bits": 4, "group_size": 32, "calib_samples": 4, "calib_seq_len": 64}},
        {"export": {"format": "onnx", "validation": {"tokens": 256, "windows": 1}}}]))
    result = run_plan(plan, tmp_path / "run", progress=False)
    assert [r.status for r in result.records] == ["ran"] * 5
    run = tmp_path / "run"
    quantized = json.loads((run / "03-quantize-gptq-w4g32" / "model" / "config.json").read_text())
    ranks = quantized["gpt2_edge"]["lowrank"]["ranks"]
    assert len(ranks) == 4 and all(r % 32 == 0 for r in ranks.values())
    step = run / "04-export-onnx"
    v = json.loads((step / "validation.json").read_text())
    assert v["passed"], v
    graph = onnx.load(str(step / "model.onnx"))
    nbits = {n.name: {a.name: a.i for a in n.attribute} for n in graph.graph.node if n.op_type == "MatMulNBits"}
    assert len(nbits) == 2 * 4 + 2 * 2  # two factors of each factorized projection, and the dense attention ones
    for name, r in ranks.items():
        block, local = name.split(".")[2], name.split(".", 3)[3]
        path = f"/transformer/h.{block}/{local.replace('.', '/')}"
        down = next(a for n, a in nbits.items() if n.startswith(f"{path}/down/"))
        up = next(a for n, a in nbits.items() if n.startswith(f"{path}/up/"))
        assert down["N"] == r == up["K"] and down["bits"] == up["bits"] == 4, name
    assert not any(n.op_type == "MatMul" and "mlp" in n.name for n in graph.graph.node)  # every factor quantized
