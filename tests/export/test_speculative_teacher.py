"""Slow: on the reference teacher, greedy speculative decoding is the teacher's own greedy text, with
the teacher in torch and as its fp32 ONNX export, and a cheap draft (its first two blocks)."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from compress.models import load_model, load_tokenizer
from evalsuite.data import read_text, tokenize
from evalsuite.runner import TorchRunner
from evalsuite.samples import greedy
from evalsuite.speculative import SpeculativeSettings, speculative_generate
from evalsuite.speculative_measure import prompts_from
from export.onnx import export_decoder, save_onnx
from export.ort_runner import OrtRunner


def first_blocks(model: GPT2LMHeadModel, n: int) -> GPT2LMHeadModel:
    """A depth-pruned copy: the embeddings, the first n blocks and the final norm, unchanged."""
    config = model.config.__class__(**{**model.config.to_dict(), "n_layer": n})
    small = GPT2LMHeadModel(config)
    small.load_state_dict({k: v for k, v in model.state_dict().items() if small.state_dict().get(k) is not None
                           and not any(k.startswith(f"transformer.h.{i}.") for i in range(n, model.config.n_layer))})
    return small.eval()


@pytest.mark.slow
def test_teacher_greedy_identity(reference_teacher, shared_data, tmp_path):
    torch.set_num_threads(2)
    teacher = load_model(reference_teacher)
    save_onnx(export_decoder(teacher, opset=18), tmp_path / "model.onnx")
    (tmp_path / "config.json").write_text(teacher.config.to_json_string())
    draft = TorchRunner(first_blocks(teacher, 2))
    ids = tokenize(read_text(shared_data / "corpus" / "heldout")[:20_000], load_tokenizer(reference_teacher))
    proposed = accepted = 0
    for target in (TorchRunner(teacher), OrtRunner(tmp_path / "model.onnx")):
        for prompt in prompts_from(ids, 3, 64):
            want = greedy(target, prompt, 32)
            for k in (1, 3, 6):
                got = speculative_generate(target, draft, prompt, SpeculativeSettings(k=k, max_new_tokens=32))
                assert got.tokens == want, (target.backend, k)
                proposed, accepted = proposed + got.stats.proposed, accepted + got.stats.accepted
    assert 0 < accepted < proposed
