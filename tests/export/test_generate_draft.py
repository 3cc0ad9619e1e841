"""`python -m export.generate TARGET --draft DRAFT`: the same text as the target alone, and the
acceptance and speed printed at the end."""

import pytest

from compress.models import load_model, load_tokenizer, save_model

from export import generate as gen_mod
from export.onnx import export_decoder, save_onnx
from tests.tiny_models import tiny_model

ARGS = ["def main(", "--max-new-tokens", "16", "--no-stop-at-eos"]


@pytest.fixture(scope="module")
def dirs(trained_tiny, tmp_path_factory, perturbed):
    model_dir, _ = trained_tiny
    model = load_model(model_dir)
    onnx_dir = tmp_path_factory.mktemp("target-onnx")
    save_onnx(export_decoder(model, opset=18), onnx_dir / "model.onnx")
    (onnx_dir / "config.json").write_text((model_dir / "config.json").read_text())
    load_tokenizer(model_dir).save_pretrained(onnx_dir)
    return model_dir, onnx_dir, save_model(perturbed(model, 0.3, seed=0), tmp_path_factory.mktemp("draft"))


def test_draft_gives_the_targets_text_and_reports_acceptance(dirs, capsys):
    model_dir, onnx_dir, draft_dir = dirs
    assert gen_mod.main([str(model_dir), *ARGS]) == 0
    alone = capsys.readouterr().out
    for target in (model_dir, onnx_dir):
        for k in ("1", "4"):
            assert gen_mod.main([str(target), *ARGS, "--draft", str(draft_dir), "-k", k]) == 0
            captured = capsys.readouterr()
            assert captured.out == alone and len(alone) > len("def main(")
            assert "proposed tokens accepted" in captured.err and "tokens per target call" in captured.err
    assert gen_mod.main([str(onnx_dir), *ARGS, "--draft", str(onnx_dir), "--adaptive"]) == 0
    captured = capsys.readouterr()
    assert captured.out == alone and "(100%)" in captured.err  # a draft equal to the target: all accepted


def test_draft_errors_are_one_line(dirs, tmp_path, capsys):
    model_dir, _, draft_dir = dirs
    assert gen_mod.main([str(model_dir), *ARGS, "--draft", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {tmp_path / 'nope'}: no such file or directory")
    assert gen_mod.main([str(model_dir), *ARGS, "--draft", str(draft_dir), "-k", "0"]) == 2
    assert "error: -k: must be in 1..64 (got 0)" in capsys.readouterr().err
    assert gen_mod.main([str(model_dir), *ARGS, "-k", "3"]) == 2
    assert "error: -k, --adaptive: only used with --draft DRAFT" in capsys.readouterr().err
    other = save_model(tiny_model(vocab_size=300), tmp_path / "other")
    assert gen_mod.main([str(model_dir), *ARGS, "--draft", str(other)]) == 2
    err = capsys.readouterr().err
    assert "draft's vocabulary (300 tokens)" in err and err.count("error:") == 1
