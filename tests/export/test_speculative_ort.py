"""Speculative decoding with ONNX Runtime runners (target, draft, or both): greedy output is the
target's own greedy output for every k, and OrtRunner's cache rollback is exact."""

import numpy as np
import pytest
import torch

from evalsuite.runner import TorchRunner
from evalsuite.samples import greedy
from evalsuite.speculative import SpeculativeSettings, speculative_generate, turn_taking
from export.onnx import export_decoder, save_onnx
from export.ort_runner import OrtRunner
from tests.tiny_models import tiny_model

PROMPTS = ([7], [5, 17, 99, 3], list(range(40, 61)))


def _export(model, out):
    out.mkdir()
    save_onnx(export_decoder(model, opset=18), out / "model.onnx")
    (out / "config.json").write_text(model.config.to_json_string())
    return OrtRunner(out / "model.onnx", threads=1)


@pytest.fixture(scope="module")
def runners(tmp_path_factory, perturbed):
    target = tiny_model(seed=0, n_positions=64)
    draft = perturbed(target, 0.3)
    tmp = tmp_path_factory.mktemp("spec")
    return {"torch": (TorchRunner(target), TorchRunner(draft)),
            "ort": (_export(target, tmp / "target"), _export(draft, tmp / "draft"))}


@pytest.mark.parametrize("target_kind,draft_kind", [("ort", "ort"), ("ort", "torch"), ("torch", "ort")])
def test_greedy_is_the_targets_greedy_for_every_k(runners, target_kind, draft_kind):
    target, draft = runners[target_kind][0], runners[draft_kind][1]
    proposed = accepted = 0
    for prompt in PROMPTS:
        want = greedy(target, prompt, 20)
        assert want == greedy(runners["torch"][0], prompt, 20)  # the ORT target is the torch target
        for k in range(1, 9):
            got = speculative_generate(target, draft, prompt, SpeculativeSettings(k=k, max_new_tokens=20))
            assert got.tokens == want, (k, prompt)
            proposed, accepted = proposed + got.stats.proposed, accepted + got.stats.accepted
    assert 0 < accepted < proposed


def test_ort_rollback_equals_a_cache_that_never_saw_the_rest(runners):
    ort_target = runners["ort"][0]
    ids = torch.tensor([[3, 9, 27, 81, 5, 6, 7]])
    _, past = ort_target.forward(ids)  # 7 cached positions
    cut = ort_target.truncate_past(past, 4)
    assert cut.length == 4 and all(a.shape[2] == 4 and a.flags["C_CONTIGUOUS"] for a in cut.arrays)
    after_cut, _ = ort_target.forward(torch.tensor([[11, 12]]), cut)
    _, fresh = ort_target.forward(ids[:, :4])
    after_fresh, _ = ort_target.forward(torch.tensor([[11, 12]]), fresh)
    np.testing.assert_allclose(after_cut.numpy(), after_fresh.numpy(), atol=1e-6, rtol=0)


def test_turn_taking_reopens_ort_runners_without_spin_wait_and_leaves_torch_alone(runners):
    ort_target, torch_target = runners["ort"][0], runners["torch"][0]
    paired = turn_taking(ort_target)
    config = paired.session.get_session_options().get_session_config_entry
    assert paired is not ort_target and config("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="allow_spinning"):  # unset: ORT's default, spinning (fastest alone)
        ort_target.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert (paired.path, paired.threads, paired.vocab_size, paired.max_positions) == (
        ort_target.path, ort_target.threads, ort_target.vocab_size, ort_target.max_positions)
    ids = torch.tensor([[3, 9, 27, 81]])
    np.testing.assert_array_equal(paired.forward(ids)[0].numpy(), ort_target.forward(ids)[0].numpy())
    assert turn_taking(torch_target) is torch_target
