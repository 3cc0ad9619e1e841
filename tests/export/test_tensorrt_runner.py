"""The parts of export.trt_runner that need no TensorRT: availability, engine/device matching,
past/present pairing and the layer-precision audit (on inspector JSON shaped like TensorRT's)."""

from __future__ import annotations

import pytest

from compress.errors import UserError
from export.trt_runner import audit_layers, compatibility_problems, layer_precision, pair_past_present, unavailable_reason

BUILT = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def test_unavailable_reason_names_what_is_missing():
    reason = unavailable_reason()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert reason is not None and "TensorRT is not installed" in reason


def test_engine_from_another_tensorrt_or_gpu_is_refused():
    assert compatibility_problems(BUILT, "10.3.0", "Orin", "8.7") == []
    assert compatibility_problems(None, "10.3.0", "Orin", "8.7") == []  # unknown: TensorRT's own check decides
    [version] = compatibility_problems(BUILT, "8.6.2", "Orin", "8.7")
    assert "TensorRT 10.3.0" in version and "8.6.2" in version
    [gpu] = compatibility_problems(BUILT, "10.3.0", "NVIDIA H200", "9.0")
    assert "Orin" in gpu and "H200" in gpu


def test_past_inputs_pair_with_present_outputs():
    past = ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key"]
    outputs = ["logits", "present.0.key", "present.0.value", "present.1.key"]
    assert pair_past_present(past, outputs)["past_key_values.1.key"] == "present.1.key"
    with pytest.raises(UserError, match="past_key_values.1.key"):
        pair_past_present(past, outputs[:-1])


@pytest.mark.parametrize("fmt, want", [("Row major linear FP16 format", "FP16"), ("Half", "FP16"), ("Float", "FP32"),
                                       ("Thirty-two wide channel vectorized row major Int8 format.", "INT8"),
                                       ("Row major linear FP32", "FP32"), ("N/A due to dynamic shapes", "unknown")])
def test_layer_precision(fmt, want):
    assert layer_precision(fmt) == want


def layer(name, kind, fmt):
    return {"Name": name, "LayerType": kind, "Inputs": [{"Name": f"{name}_in", "Format/Datatype": fmt}],
            "Outputs": [{"Name": f"{name}_out", "Format/Datatype": fmt}]}


def test_audit_names_gemms_that_fell_back_from_int8():
    info = {"Layers": [layer("qkv", "CaskGemmMatrixMultiply", "Row major linear Int8 format"),
                       layer("mlp_fc", "CaskGemmMatrixMultiply", "Row major linear FP16 format"),
                       layer("ln", "Normalization", "Row major linear FP16 format")]}
    warnings = audit_layers(info, "int8")
    assert len(warnings) == 1 and warnings[0].startswith("mlp_fc:") and "FP16" in warnings[0]
    assert audit_layers(info, "fp16") == []


def test_audit_flags_a_quantized_engine_without_quantized_data_and_opaque_layers():
    info = {"Layers": [layer("{ForeignNode[/h.0/attn...]}", "Myelin", "Half")]}
    warnings = " | ".join(audit_layers(info, "int4"))
    assert "no layer reads or writes INT4" in warnings
    assert "1 Myelin (ForeignNode)" in warnings
    assert "names only" in audit_layers({"Layers": ["qkv", "mlp"]}, "int8")[0]
