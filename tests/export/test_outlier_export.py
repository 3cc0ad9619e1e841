"""ORT dynamic int8 of an fp32 export on planted outliers: refused unless allowed; smoothing first keeps quality."""

import copy
import logging

import numpy as np
import pytest
import torch

from compress.quantization.outlier_check import OutlierRefusal
from compress.quantization.smooth_dynamic import prepare_ort_dynamic
from evalsuite.outliers import plant_outliers
from export.step import ExportConfig, build_graph
from tests.tiny_models import tiny_model

TRAIN = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def planted():
    return plant_outliers(tiny_model(seed=2), [3, 17, 40, 59], 40.0)


def _ort_logits_error(model, reference, run_decoder) -> float:
    graph, _ = build_graph(ExportConfig(quantize="dynamic-int8"), model, {}, logging.getLogger("test"))
    logits = run_decoder(graph)[0]  # (2, 6, V) on the fixture's fixed ids
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 6)))  # the ids run_decoder feeds
    with torch.no_grad():
        expected = reference(ids).logits.numpy()
    return float(np.sqrt(np.mean((logits - expected) ** 2)))


def test_refused_then_allowed_then_smoothed(planted, run_decoder):
    with pytest.raises(OutlierRefusal, match=r"^steps\[1\].export: ONNX Runtime dynamic int8 quantizes activations "
                                             r"per tensor and calibration finds h\.\d\.(attn\.c_attn|mlp\.c_fc) input"):
        try:
            prepare_ort_dynamic(copy.deepcopy(planted), TRAIN, None, False, "export")
        except OutlierRefusal as e:
            raise e.at("steps[1].export") from None

    allowed = copy.deepcopy(planted)
    record = prepare_ort_dynamic(allowed, TRAIN, None, True, "export")
    assert record["allow_outliers"] and "lm_head" in record["checked"]
    smoothed = copy.deepcopy(planted)
    record = prepare_ort_dynamic(smoothed, TRAIN, 0.5, False, "export")  # passes: smoothed inputs not checked
    assert record["checked"] == ["mlp.c_proj", "lm_head"]
    ids = TRAIN[:64].view(1, 64)
    with torch.no_grad():  # smoothing is folded into the fp32 model: same function
        torch.testing.assert_close(smoothed(ids).logits, planted(ids).logits, atol=1e-4, rtol=0)

    err_plain = _ort_logits_error(allowed, planted, run_decoder)
    err_smooth = _ort_logits_error(smoothed, planted, run_decoder)
    assert err_smooth < err_plain / 3, (err_smooth, err_plain)


@pytest.mark.parametrize("options, message", [({"smooth": 0.5}, "only with quantize: dynamic-int8"),
                                              ({"quantize": "int4", "allow_outliers": True}, "only with quantize")])
def test_outlier_options_need_ort_dynamic_int8(options, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**options)


def _export_plan(tmp_path, tokenizer):
    """plan(export_options, name) -> a plan exporting a planted tiny GPT-2 with ORT dynamic int8."""
    import yaml

    from compress.models import save_model
    from compress.plan import load_plan

    model = plant_outliers(tiny_model(vocab_size=len(tokenizer), n_positions=64), [3, 17, 40, 59], 40.0)
    save_model(model, tmp_path / "planted", tokenizer)
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog by the river.\n\n" * 80)

    def plan(export: dict, name: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "model": str(tmp_path / "planted"),
            "data": {"train": {"path": str(tmp_path / "text.txt")},
                     "eval": {"path": str(tmp_path / "text.txt"), "seq_len": 32, "max_tokens": 256}},
            "eval": {"latency": {"prompt": 4, "new_tokens": 2, "repeats": 1, "warmup": 0}, "targets": ["host"]},
            "steps": [{"export": {"format": "onnx", "quantize": "dynamic-int8", **export}}]}))
        return load_plan(path)

    return plan


def test_export_step_refuses_with_the_step_key(tmp_path, byte_tokenizer):
    from compress.errors import UserError
    from compress.pipeline import run_plan

    plan = _export_plan(tmp_path, byte_tokenizer)
    with pytest.raises(UserError, match=r"^steps\[0\]\.export: ONNX Runtime dynamic int8 quantizes activations per "
                                        r"tensor .* quantize before the export .* or set steps\[0\]\.export\.allow_outliers: true$"):
        run_plan(plan({}, "refused"), tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("01-*/DONE"))


@pytest.mark.slow
def test_export_step_smooths_then_exports_and_validates(tmp_path, byte_tokenizer):
    import json

    from compress.pipeline import run_plan

    plan = _export_plan(tmp_path, byte_tokenizer)
    run_plan(plan({"smooth": 0.5}, "smoothed"), tmp_path / "run2", progress=False)
    (step_dir,) = (tmp_path / "run2").glob("01-export-onnx")
    info = json.loads((step_dir / "step.json").read_text())
    assert (step_dir / "DONE").exists() and info["info"]["validation"]["passed"]
    assert info["info"]["outliers"]["checked"] == ["mlp.c_proj", "lm_head"]
    assert "worst activation outlier" in info["summary"] and "smooth 0.5" in info["summary"]
