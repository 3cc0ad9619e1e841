"""generate(): one function for every Runner; greedy on ONNX Runtime equals greedy on torch."""

import io
import json

import pytest
import torch

from compress.errors import UserError
from evalsuite.runner import TorchRunner
from export import generate as gen_mod
from export.generate import GenerationConfig, TextStream, generate, next_token_logits, open_any
from export.onnx import export_decoder, save_onnx
from export.ort_runner import OrtRunner


@pytest.fixture(scope="module")
def runners(trained_tiny, tmp_path_factory):
    from compress.models import load_model, load_tokenizer

    model_dir, _ = trained_tiny
    model = load_model(model_dir)
    out = tmp_path_factory.mktemp("export")
    save_onnx(export_decoder(model, opset=18), out / "model.onnx")
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir)
    tok.save_pretrained(out)
    return TorchRunner(model), OrtRunner(out / "model.onnx"), tok, out, model_dir


def test_greedy_on_ort_equals_greedy_on_torch(runners):
    torch_runner, ort_runner, tok, _, _ = runners
    prompt = tok.encode("def main(")
    cfg = GenerationConfig(max_new_tokens=30, stop_at_eos=False)
    a = generate(torch_runner, prompt, cfg)
    b = generate(ort_runner, prompt, cfg)
    assert a == b and len(a) == 30
    with torch.no_grad():  # and greedy with the cache equals argmax of a full forward each step
        ids = torch.tensor([prompt + a[:-1]])
        full = torch_runner.model(ids).logits[0, len(prompt) - 1:].argmax(-1).tolist()
    assert full == a


def test_sampling_is_seeded_and_top_k_1_is_greedy(runners):
    _, ort_runner, tok, _, _ = runners
    prompt = tok.encode("The ")
    sample = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=1.5, stop_at_eos=False, seed=7)
    assert generate(ort_runner, prompt, sample) == generate(ort_runner, prompt, sample)
    other = generate(ort_runner, prompt, sample.model_copy(update={"seed": 8}))
    assert other != generate(ort_runner, prompt, sample)
    top1 = GenerationConfig(max_new_tokens=20, do_sample=True, top_k=1, stop_at_eos=False)
    assert generate(ort_runner, prompt, top1) == generate(ort_runner, prompt, GenerationConfig(max_new_tokens=20,
                                                                                               stop_at_eos=False))


def test_stops_at_eos_and_at_max_new_tokens(runners):
    _, ort_runner, tok, _, _ = runners
    prompt = tok.encode("x = 1\n")
    greedy = generate(ort_runner, prompt, GenerationConfig(max_new_tokens=10, stop_at_eos=False))
    assert len(greedy) == 10
    # Call the last new token "EOS": generation must stop right after its first appearance.
    first = greedy.index(greedy[-1])
    cut = generate(ort_runner, prompt, GenerationConfig(max_new_tokens=10, eos_token_id=greedy[-1]))
    assert cut == greedy[:first + 1]
    ignored = generate(ort_runner, prompt, GenerationConfig(max_new_tokens=10, eos_token_id=greedy[-1],
                                                            stop_at_eos=False))
    assert ignored == greedy


def test_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    seen = torch.tensor([0, 4])
    rep = next_token_logits(logits, seen, GenerationConfig(repetition_penalty=2.0))
    assert rep.tolist() == [1.5, 2.0, 1.0, 0.0, -2.0]  # positive / 2, negative * 2, unseen unchanged
    k = next_token_logits(logits, seen[:0], GenerationConfig(do_sample=True, top_k=2))
    assert torch.isinf(k[2:]).all() and not torch.isinf(k[:2]).any()
    p = next_token_logits(logits, seen[:0], GenerationConfig(do_sample=True, top_p=0.7))
    probs = torch.softmax(logits, -1)  # 0.64, 0.24, ...: the top two are needed to reach 0.7
    assert probs[0] < 0.7 < probs[:2].sum()
    assert (~torch.isinf(p)).sum() == 2
    t = next_token_logits(logits, seen[:0], GenerationConfig(do_sample=True, temperature=0.5))
    assert t.tolist() == (logits * 2).tolist()


def test_sampling_knobs_without_sampling_are_refused():
    with pytest.raises(ValueError, match="top_p: only used when sampling"):
        GenerationConfig(top_p=0.9)


def test_prompt_longer_than_the_context_is_a_user_error(runners):
    _, ort_runner, _, _, _ = runners
    with pytest.raises(UserError, match="context is 128"):
        generate(ort_runner, [1] * 200, GenerationConfig())


def test_text_stream_holds_back_partial_characters():
    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join({1: "a", 2: "\ufffd", 3: "é"}[i] for i in ids if i != 2) + ("\ufffd" if ids[-1] == 2 else "")

    out = io.StringIO()
    stream = TextStream(Tok(), out)
    stream(1)
    stream(2)
    assert out.getvalue() == "a"  # the half character is not printed yet
    stream(3)
    assert out.getvalue() == "aé"


def test_cli_streams_from_a_step_dir_and_a_torch_dir(runners, tmp_path, capsys):
    torch_runner, _, tok, out, model_dir = runners
    step = tmp_path / "03-export-onnx"
    step.mkdir()
    for f in out.iterdir():
        (step / f.name).write_bytes(f.read_bytes())
    (step / "step.json").write_text(json.dumps({"artifact": "model.onnx", "backend": "onnxruntime"}))
    assert gen_mod.main([str(step), "def main(", "--max-new-tokens", "12", "--no-stop-at-eos"]) == 0
    onnx_text = capsys.readouterr().out
    assert gen_mod.main([str(model_dir), "def main(", "--max-new-tokens", "12", "--no-stop-at-eos"]) == 0
    captured = capsys.readouterr()
    assert onnx_text == captured.out and onnx_text.startswith("def main(") and len(onnx_text) > len("def main(")
    assert "[torch on cpu" in captured.err


def test_cli_errors_are_one_line(runners, tmp_path, capsys):
    assert gen_mod.main([str(tmp_path / "nope"), "hi"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    bad = tmp_path / "model.onnx"
    bad.write_text("not a model")
    assert gen_mod.main([str(bad), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cannot load this model" in err and "\n" not in err
    _, _, _, out, _ = runners
    assert gen_mod.main([str(out), "hi", "--top-k", "5"]) == 2
    assert "add do_sample (--sample)" in capsys.readouterr().err


def test_open_any_resolves_a_torch_step_dir(runners, tmp_path):
    _, _, _, _, model_dir = runners
    step = tmp_path / "01-prune"
    (step / "model").mkdir(parents=True)
    for f in model_dir.iterdir():
        (step / "model" / f.name).write_bytes(f.read_bytes())
    (step / "step.json").write_text(json.dumps({"model_dir": "model", "backend": "torch"}))
    runner, tok_dir = open_any(step)
    assert runner.backend == "torch" and tok_dir == step / "model"
