"""ORT dynamic int8 (method ort-dynamic-int8, applied in the export's graph) on planted outliers: refused
unless allowed; smoothing first keeps quality; the older `export: {quantize: dynamic-int8}` still runs."""

import copy
import logging
import re

import numpy as np
import pytest
import torch

from compress.quantization import QuantizeConfig, quantize
from compress.quantization.outlier_check import OutlierRefusal
from evalsuite.outliers import plant_outliers
from export.step import ExportConfig, build_graph
from tests.tiny_models import tiny_model

TRAIN = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def planted():
    return plant_outliers(tiny_model(seed=2), [3, 17, 40, 59], 40.0)


def _ort_dynamic(model, **options):
    """quantize step of method ort-dynamic-int8 in memory; returns the model and its outlier record."""
    q = quantize(model, QuantizeConfig(method="ort-dynamic-int8", **options), TRAIN)
    return q, q.config.quantization_config["gpt2_edge"]["outliers"]


def _ort_logits_error(model, reference, run_decoder) -> float:
    graph, done = build_graph(ExportConfig(), model, {}, logging.getLogger("test"))
    assert done["ort_quantizer"].startswith("quantize_dynamic")
    logits = run_decoder(graph)[0]  # (2, 6, V) on the fixture's fixed ids
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 6)))  # the ids run_decoder feeds
    with torch.no_grad():
        expected = reference(ids).logits.numpy()
    return float(np.sqrt(np.mean((logits - expected) ** 2)))


def test_refused_then_allowed_then_smoothed(planted, run_decoder):
    with pytest.raises(OutlierRefusal, match=r"^steps\[1\].quantize: method ort-dynamic-int8 quantizes activations "
                                             r"per tensor and calibration finds h\.\d\.(attn\.c_attn|mlp\.c_fc) input"):
        try:
            _ort_dynamic(copy.deepcopy(planted))
        except OutlierRefusal as e:
            raise e.at("steps[1].quantize") from None

    allowed, record = _ort_dynamic(copy.deepcopy(planted), allow_outliers=True)
    assert record["allow_outliers"] and "lm_head" in record["checked"]
    smoothed, record = _ort_dynamic(copy.deepcopy(planted), smooth=0.5)  # passes: smoothed inputs not checked
    assert record["checked"] == ["mlp.c_proj", "lm_head"]
    ids = TRAIN[:64].view(1, 64)
    with torch.no_grad():  # smoothing is folded into the fp32 model: same function
        torch.testing.assert_close(smoothed(ids).logits, planted(ids).logits, atol=1e-4, rtol=0)

    err_plain = _ort_logits_error(allowed, planted, run_decoder)
    err_smooth = _ort_logits_error(smoothed, planted, run_decoder)
    assert err_smooth < err_plain / 3, (err_smooth, err_plain)


@pytest.mark.parametrize("options, message", [
    ({"smooth": 0.5}, "smooth: options of method ort-dynamic-int8 now: `- quantize: {method: ort-dynamic-int8, "
                      "smooth: 0.5}` before the export"),
    ({"quantize": "int4", "allow_outliers": True}, "allow_outliers applies to method")])
def test_old_outlier_options_name_the_method_that_has_them(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExportConfig(**options)


def _export_plan(tmp_path, tokenizer):
    """plan(export_options, name) -> a plan exporting a planted tiny GPT-2 with ORT dynamic int8."""
    import yaml

    from compress.models import save_model
    from compress.plan import load_plan

    model = plant_outliers(tiny_model(vocab_size=len(tokenizer), n_positions=64), [3, 17, 40, 59], 40.0)
    save_model(model, tmp_path / "planted", tokenizer)
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog by the river.\n\n" * 80)

    def plan(quantize: dict | None, name: str, export: dict | None = None):
        """quantize: the ort-dynamic-int8 step's options; None: the older spelling, `export` its keys."""
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "model": str(tmp_path / "planted"),
            "data": {"train": {"path": str(tmp_path / "text.txt")},
                     "eval": {"path": str(tmp_path / "text.txt"), "seq_len": 32, "max_tokens": 256}},
            "eval": {"latency": {"prompt": 4, "new_tokens": 2, "repeats": 1, "warmup": 0}, "targets": ["host"]},
            "steps": ([{"quantize": {"method": "ort-dynamic-int8", **quantize}}, {"export": {"format": "onnx"}}]
                      if quantize is not None else
                      [{"export": {"format": "onnx", "quantize": "dynamic-int8", **(export or {})}}])}))
        return load_plan(path)

    return plan


def test_quantize_step_refuses_with_the_step_key(tmp_path, byte_tokenizer):
    from compress.errors import UserError
    from compress.pipeline import run_plan

    plan = _export_plan(tmp_path, byte_tokenizer)
    with pytest.raises(UserError, match=r"^steps\[0\]\.quantize: method ort-dynamic-int8 quantizes activations per "
                                        r"tensor .* or set steps\[0\]\.quantize\.allow_outliers: true$"):
        run_plan(plan({}, "refused"), tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("01-*/DONE"))


def test_old_export_spelling_notes_the_new_one_and_refuses_at_the_export_key(tmp_path, byte_tokenizer, caplog):
    from compress.errors import UserError
    from compress.pipeline import run_plan
    from compress.plan_check import check_steps

    plan = _export_plan(tmp_path, byte_tokenizer)
    old = plan(None, "old")
    assert check_steps(old).notes == ["steps[0].export: quantize: dynamic-int8 is now "
                                      "`- quantize: {method: ort-dynamic-int8}` before the export"]
    with caplog.at_level(logging.WARNING), pytest.raises(
            UserError, match=r"^steps\[0\]\.export: method ort-dynamic-int8 quantizes activations per tensor .* "
                             r"quantize before the export .* or set steps\[0\]\.export\.allow_outliers: true$"):
        run_plan(old, tmp_path / "run", progress=False)
    assert "is now `- quantize: {method: ort-dynamic-int8}` before the export" in caplog.text


@pytest.mark.slow
def test_quantize_step_smooths_then_export_quantizes_and_validates(tmp_path, byte_tokenizer):
    import json

    from compress.pipeline import run_plan

    plan = _export_plan(tmp_path, byte_tokenizer)
    run_plan(plan({"smooth": 0.5}, "smoothed"), tmp_path / "run2", progress=False)
    q = json.loads(next((tmp_path / "run2").glob("01-quantize-*")).joinpath("step.json").read_text())
    assert q["info"]["outliers"]["checked"] == ["mlp.c_proj", "lm_head"]
    (step_dir,) = (tmp_path / "run2").glob("02-export-onnx")
    info = json.loads((step_dir / "step.json").read_text())
    assert (step_dir / "DONE").exists() and info["info"]["validation"]["passed"]
    assert info["info"]["passes"]["quantized_ops"]["MatMulInteger"] == 9
    assert "ort-dynamic-int8 int8 by ONNX Runtime's quantizer" in info["summary"]
