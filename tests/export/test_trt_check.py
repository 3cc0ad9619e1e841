"""The static TensorRT checker on small ONNX graphs with planted problems (built with onnx.helper)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.profiles import TensorRTProfile
from export.trt_check import check, check_model, errors

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inits=(), inputs=None, outputs=None, opset=17, ir=10, ms=False):
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", F32, [2, 8])]
    outputs = outputs if outputs is not None else [helper.make_tensor_value_info("y", F32, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def codes(findings, severity=None):
    return {(f.code, f.node) for f in findings if severity is None or f.severity == severity}


def linear(weight=None, name="fc"):
    """x (B, 8) @ W (8, 4) -> y: the plain float graph every test perturbs."""
    w = const("W", np.ones((8, 4), np.float32) if weight is None else weight)
    return [helper.make_node("MatMul", ["x", "W"], ["y"], name=name)], [w]


def int8_linear(w_zero=0, scale=0.1, act_scale=0.05, axis=1):
    """W8A8: Q/DQ on the activation (per-tensor) and DQ on an int8 per-channel weight."""
    inits = [const("W_q", np.ones((8, 4), np.int8)), const("W_s", np.full(4, scale, np.float32)),
             const("W_z", np.full(4, w_zero, np.int8)), const("x_s", np.float32(act_scale)), const("x_z", np.int8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="qx"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], name="dqx"),
             helper.make_node("DequantizeLinear", ["W_q", "W_s", "W_z"], ["W_dq"], name="dqw", axis=axis),
             helper.make_node("MatMul", ["x_dq", "W_dq"], ["y"], name="fc")]
    return nodes, inits


def int4_linear(k=128, n=4, block=64, scale_dtype=np.float32):
    """Weight-only INT4: DequantizeLinear of a (K, N) int4 weight blocked along K."""
    w = helper.make_tensor("W_q", TensorProto.INT4, [k, n], np.ones(k * n, np.int8).tolist())
    s = const("W_s", np.full((k // block, n), 0.1, scale_dtype))
    nodes = [helper.make_node("DequantizeLinear", ["W_q", "W_s"], ["W_dq"], name="dqw", axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "W_dq"], ["y"], name="fc")]
    x = [helper.make_tensor_value_info("x", F32, [2, k])]
    return model(nodes, [w, s], inputs=x, opset=21)


def test_clean_float_graph_has_no_errors():
    nodes, inits = linear()
    assert errors(check_model(model(nodes, inits), "fp16")) == []


def test_unsupported_and_contrib_ops_are_named():
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("MatMulNBits", ["x", "Wq", "Ws"], ["y"], name="lm_head_q4", domain="com.microsoft",
                              K=8, N=4, bits=4, block_size=32),
             helper.make_node("LayerNormalization", ["x", "g"], ["z"], name="ms_ln", domain="com.microsoft")]
    found = codes(check_model(model(nodes, ms=True), "fp16"), "error")
    assert ("unsupported-op", "uniq") in found
    assert ("contrib-op", "lm_head_q4") in found
    assert ("contrib-op", "ms_ln") in found  # same name as the ONNX op, other semantics: rejected too
    hint = next(f for f in check_model(model(nodes, ms=True), "int4") if f.node == "lm_head_q4")
    assert "DequantizeLinear" in hint.message and "INT4" in hint.message


def test_ops_inside_if_branches_are_checked():
    bad = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner")], "then", [],
                           [helper.make_tensor_value_info("u", F32, None)])
    ok = helper.make_graph([helper.make_node("Identity", ["x"], ["v"], name="inner2")], "else", [],
                          [helper.make_tensor_value_info("v", F32, None)])
    cond = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    node = helper.make_node("If", ["use_cache_branch"], ["y"], name="merged", then_branch=bad, else_branch=ok)
    found = codes(check_model(model([node], inputs=[cond, helper.make_tensor_value_info("x", F32, [2])]), "fp16"))
    assert ("unsupported-op", "merged/then_branch/inner") in found
    assert ("merged-decoder", "merged") in found


@pytest.mark.parametrize("target, opset, bad", [("10.3", 22, True), ("10.15", 22, False), ("8.6", 18, True),
                                                ("10.3", 17, False), ("10.3", 6, True)])
def test_opset_range_per_target(target, opset, bad):
    nodes, inits = linear()
    found = codes(check_model(model(nodes, inits, opset=opset), "fp16", target=target), "error")
    assert (("opset", "") in found) == bad


def test_layernorm_needs_86_and_only_output_y():
    ln = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean"], name="ln")
    inits = [const("g", np.ones(8, np.float32)), const("b", np.zeros(8, np.float32))]
    outs = [helper.make_tensor_value_info("y", F32, None), helper.make_tensor_value_info("mean", F32, None)]
    found = codes(check_model(model([ln], inits, outputs=outs), "fp16"), "error")
    assert ("layernorm-outputs", "ln") in found
    ln_ok = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln")
    assert codes(check_model(model([ln_ok], inits), "fp16"), "error") == set()
    assert ("unsupported-op", "ln") in codes(check_model(model([ln_ok], inits), "fp16", target="8.5"))


def test_computed_unsqueeze_axes_are_an_error():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["axes"], name="sl"),
             helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")]
    inits = [const("zero", np.array([0])), const("one", np.array([1]))]
    assert ("non-constant-input", "unsq") in codes(check_model(model(nodes, inits), "fp16"), "error")
    nodes[2] = helper.make_node("Unsqueeze", ["x", "zero"], ["y"], name="unsq")
    assert ("non-constant-input", "unsq") not in codes(check_model(model(nodes, inits), "fp16"))


def test_double_and_unsupported_dtypes():
    w = const("W", np.ones((8, 4), np.float64))
    cast = helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE, name="to_double")
    mm = helper.make_node("MatMul", ["xd", "W"], ["y"], name="fc")
    found = codes(check_model(model([cast, mm], [w]), "fp16"), "error")
    assert ("dtype-double", "W") in found and ("dtype-double", "xd") in found
    u16 = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT16, name="to_u16"),
           helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT, name="back")]
    assert ("dtype-unsupported", "u") in codes(check_model(model(u16), "fp16"), "error")


def test_integer_matmul_is_a_type_error():
    x = [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 8])]
    nodes, _ = linear()
    found = codes(check_model(model(nodes, [const("W", np.ones((8, 4), np.int32))], inputs=x), "fp16"), "error")
    assert ("op-dtype", "fc") in found


def test_int64_constants_narrowed_only_on_tensorrt_8():
    big = const("big", np.array([2**40], np.int64))
    nodes = [helper.make_node("Reshape", ["x", "big"], ["y"], name="r")]
    assert ("int64-narrowed", "big") in codes(check_model(model(nodes, [big]), "fp16", target="8.6"), "warning")
    assert ("int64-narrowed", "big") not in codes(check_model(model(nodes, [big]), "fp16", target="10.3"))
    end = const("end", np.array([2**63 - 1], np.int64))  # Slice "to the end": clamping changes nothing
    sl = [helper.make_node("Slice", ["x", "zero", "end"], ["y"], name="s")]
    assert ("int64-narrowed", "end") not in codes(check_model(model(sl, [end, const("zero", [0])]), "fp16", target="8.6"))


def test_symmetric_int8_qdq_passes():
    nodes, inits = int8_linear()
    found = check_model(model(nodes, inits, opset=13), "int8")
    assert errors(found) == [] and not codes(found, "warning")


@pytest.mark.parametrize("kwargs, code, node", [
    (dict(w_zero=3), "qdq-zero-point", "dqw"),
    (dict(scale=-0.1), "qdq-scale", "dqw"),
    (dict(axis=0), "qdq-weight-scale", "dqw"),  # 4 scales but the weight has 8 rows on axis 0
])
def test_planted_qdq_problems(kwargs, code, node):
    nodes, inits = int8_linear(**kwargs)
    assert (code, node) in codes(check_model(model(nodes, inits, opset=13), "int8"), "error")


def test_activation_scale_must_be_per_tensor_and_constant():
    nodes, inits = int8_linear()
    inits = [i for i in inits if i.name != "x_s"] + [const("x_s", np.full(8, 0.05, np.float32))]
    assert ("qdq-activation-scale", "qx") in codes(check_model(model(nodes, inits, opset=13), "int8"), "error")
    nodes, inits = int8_linear()
    inits = [i for i in inits if i.name != "x_s"]
    x_s = helper.make_tensor_value_info("x_s", F32, [])
    x = helper.make_tensor_value_info("x", F32, [2, 8])
    assert ("qdq-scale", "qx") in codes(check_model(model(nodes, inits, inputs=[x, x_s], opset=13), "int8"), "error")


def test_blocked_int4_weight_only():
    found = check_model(int4_linear(), "int4")
    assert errors(found) == []
    assert ("opset", "") in codes(found, "warning")  # opset 21 on TensorRT 10.3: verify on the device
    assert ("qdq-int4-block", "dqw") in codes(check_model(int4_linear(block=32), "int4"), "warning")
    assert ("qdq-int4", "dqw") in codes(check_model(int4_linear(n=5), "int4"), "error")  # odd last dim
    assert ("qdq-int4", "dqw") in codes(check_model(int4_linear(), "int4", target="8.6"), "error")


def test_int4_in_an_old_ir_version_is_an_error():
    m = int4_linear()
    m.ir_version = 9
    assert ("ir-version", "") in codes(check_model(m, "int4"), "error")


def test_precision_against_the_graph():
    nodes, inits = linear()
    assert ("precision-mismatch", "") in codes(check_model(model(nodes, inits), "int8"), "error")
    assert ("precision-mismatch", "") in codes(check_model(model(nodes, inits), "int4"), "error")
    qnodes, qinits = int8_linear()
    assert ("precision-mismatch", "") in codes(check_model(model(qnodes, qinits, opset=13), "fp16"), "warning")
    # one quantized and one float MatMul: the float one is named as running in fp16/fp32
    extra = helper.make_node("MatMul", ["y", "W2"], ["z"], name="head")
    m = model(qnodes + [extra], qinits + [const("W2", np.ones((4, 4), np.float32))],
              outputs=[helper.make_tensor_value_info("z", F32, None)], opset=13)
    assert ("not-quantized", "head") in codes(check_model(m, "int8"), "warning")


def test_weight_reached_through_transpose_counts_as_quantized():
    """The tied LM head is MatMul(x, Transpose(DQ(wte))): still an int8 weight."""
    nodes, inits = int8_linear()
    nodes[2] = helper.make_node("DequantizeLinear", ["W_q", "W_s", "W_z"], ["W_dqt"], name="dqw", axis=1)
    nodes.insert(3, helper.make_node("Transpose", ["W_dqt"], ["W_dq"], name="t", perm=[0, 1]))
    assert errors(check_model(model(nodes, inits, opset=13), "int8")) == []


def test_int8_tensor_outside_qdq_is_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["x8"], to=TensorProto.INT8, name="to_int8"),
             helper.make_node("Cast", ["x8"], ["y"], to=TensorProto.FLOAT, name="back")]
    assert ("dtype-quantized", "x8") in codes(check_model(model(nodes), "fp16"), "error")


def test_dynamic_dims_against_the_profile():
    ids = helper.make_tensor_value_info("input_ids", I64, ["batch_size", 128])  # static sequence
    past = helper.make_tensor_value_info("past_key_values.0.key", F32, ["batch_size", "heads", "past", 16])
    odd = helper.make_tensor_value_info("foo", F32, ["n"])
    node = helper.make_node("Identity", ["past_key_values.0.key"], ["y"], name="id")
    m = model([node], inputs=[ids, past, odd])
    found = codes(check_model(m, "fp16", profile=TensorRTProfile(prompt=(1, 1, 256), past=(0, 64, 255))), "error")
    assert {("dynamic-shape", "input_ids"), ("dynamic-shape", "past_key_values.0.key"),
            ("dynamic-shape", "foo")} <= found


def test_profile_against_positions():
    nodes, inits = linear()
    found = check_model(model(nodes, inits), "fp16", profile=TensorRTProfile(past=(0, 64, 1024)), n_positions=1024)
    assert ("profile", "") in codes(found, "error")


def test_check_reads_a_file(tmp_path):
    import onnx

    nodes = [helper.make_node("NonMaxSuppressionX", ["x"], ["y"], name="bad")]
    onnx.save(model(nodes), tmp_path / "m.onnx")
    assert [f.node for f in errors(check(tmp_path / "m.onnx", "fp16"))] == ["bad"]
