"""Activation outliers: per-tensor int8 is refused on them unless allowed, and smoothing first keeps quality."""

import copy

import pytest
import torch

from compress import QuantizeConfig, quantize
from compress.errors import UserError
from compress.models import load_model, save_model
from compress.quantization.outlier_check import OUTLIER_LIMIT, OutlierRefusal
from evalsuite.outliers import plant_outliers
from tests.tiny_models import tiny_model

CHANNELS = [3, 17, 40, 59]
CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(1))  # not the calibration ids
OPTS = dict(calib_samples=8, calib_seq_len=64)


@pytest.fixture(scope="module")
def planted():
    """A tiny GPT-2 with outliers x40 in 4 LayerNorm channels of both blocks (same fp32 function)."""
    return plant_outliers(tiny_model(seed=0), CHANNELS, 40.0)


def _logit_rms(model, reference) -> float:
    with torch.no_grad():
        return float((model(IDS).logits - reference(IDS).logits).pow(2).mean().sqrt())


def test_plain_dynamic_int8_is_refused_with_the_diagnostic(planted):
    with pytest.raises(OutlierRefusal) as e:
        quantize(copy.deepcopy(planted), QuantizeConfig(method="dynamic-int8", **OPTS), CALIB)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("quantize: method dynamic-int8 quantizes activations per tensor")
    assert "h.0.attn.c_attn input: max/median 4" in msg or "h.0.mlp.c_fc input: max/median 4" in msg
    assert "smooth: 0.5" in msg and "smoothquant" in msg and "bnb-int8" in msg
    assert msg.endswith("or set quantize.allow_outliers: true")
    assert "steps[2].quantize.allow_outliers" in str(e.value.at("steps[2].quantize"))


def test_allow_outliers_lets_it_through_and_records_the_profile(planted, tmp_path):
    q = quantize(copy.deepcopy(planted), QuantizeConfig(method="dynamic-int8", allow_outliers=True, **OPTS), CALIB)
    record = q.config.quantization_config["gpt2_edge"]["outliers"]
    assert record["allow_outliers"] and record["limit"] == OUTLIER_LIMIT
    assert record["max_over_median"]["h.1.mlp.c_fc"] > OUTLIER_LIMIT
    assert {c for c, _ in record["top_channels"][record["worst_checked"].split(" ")[0]]} == set(CHANNELS)
    reloaded = load_model(save_model(q, tmp_path))  # the record rides in config.json, the model reloads
    assert reloaded.config.quantization_config["gpt2_edge"]["outliers"]["worst"] == record["worst"]


def test_smoothed_dynamic_int8_beats_plain_on_planted_outliers(planted):
    plain = quantize(copy.deepcopy(planted), QuantizeConfig(method="dynamic-int8", allow_outliers=True, **OPTS), CALIB)
    smoothed = quantize(copy.deepcopy(planted), QuantizeConfig(method="dynamic-int8", smooth=0.5, **OPTS), CALIB)
    unplanted = quantize(tiny_model(seed=0), QuantizeConfig(method="dynamic-int8", **OPTS), CALIB)  # not refused
    err_plain, err_smooth = _logit_rms(plain, planted), _logit_rms(smoothed, planted)
    assert err_smooth < err_plain / 4, (err_smooth, err_plain)
    assert err_smooth < 2 * _logit_rms(unplanted, tiny_model(seed=0))  # about as good as without outliers
    assert smoothed.config.quantization_config["gpt2_edge"]["outliers"]["checked"] == ["mlp.c_proj"]


def test_smoothquant_checks_only_the_unsmoothed_input(planted):
    q = quantize(copy.deepcopy(planted), QuantizeConfig(method="smoothquant", **OPTS), CALIB)  # not refused
    assert q.config.quantization_config["gpt2_edge"]["outliers"]["checked"] == ["mlp.c_proj"]


def test_dynamic_int8_without_calibration_needs_allow_outliers():
    with pytest.raises(UserError, match="calibration token ids .* activation-outlier check; or set allow_outliers"):
        quantize(tiny_model(), QuantizeConfig(method="dynamic-int8"))
    with pytest.raises(UserError, match="for smooth"):
        quantize(tiny_model(), QuantizeConfig(method="dynamic-int8", smooth=0.5, allow_outliers=True))
    q = quantize(tiny_model(), QuantizeConfig(method="dynamic-int8", allow_outliers=True))
    assert "outliers" not in q.config.quantization_config["gpt2_edge"]


@pytest.mark.parametrize("options, message", [
    (dict(method="rtn", smooth=0.5), "smooth applies to method dynamic-int8 / ort-dynamic-int8 only"),
    (dict(method="gptq", allow_outliers=True), "allow_outliers applies to method smoothquant / dynamic-int8 / ort-dynamic-int8 only"),
    (dict(method="dynamic-int8", smooth=1.5), "less than or equal to 1"),
])
def test_outlier_options_are_bounded(options, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**options)
