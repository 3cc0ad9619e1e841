"""The shared training loop's divergence guard: a diverged or worsened model fails loudly."""

import json
import math

import pytest
import torch

from compress import DistillConfig, distill
from compress.checkpoint import STATE_FILE
from compress.errors import UserError
from compress.divergence import DivergenceError, DivergenceGuard, GuardConfig
from compress.source_config import PretrainConfig
from compress.pretrain import pretrain
from tests.tiny_models import tiny_config, tiny_model


def pattern_ids(n=6000, vocab=64):
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))
    ids[1::2] = (ids[::2] + 1) % vocab  # every odd token follows from the one before
    return ids


def pretrain_cfg(**kw) -> PretrainConfig:
    base = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64, seq_len=32, batch_size=8, tokens=32 * 8 * 12,
                lr=5e-3, warmup_steps=2, checkpoint_every=4, eval_every=4)
    return PretrainConfig(**{**base, **kw})


def test_pretrain_at_lr_1_fails_and_names_the_checkpoint(tmp_path):
    config = tiny_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    ids = pattern_ids()
    with pytest.raises(DivergenceError) as e:
        pretrain(pretrain_cfg(lr=1.0, eval_every=6), config, ids[:5000], ids[5000:], checkpoint_dir=tmp_path / "ckpt",
                 progress=False)
    msg = str(e.value)
    assert msg.startswith("pretrain: held-out ppl") and "\n" not in msg
    assert "lower model.pretrain.lr (now 1)" in msg and "not marked done" in msg
    assert f"the last checkpoint (step 4) in {tmp_path / 'ckpt'}" in msg
    assert json.loads((tmp_path / "ckpt" / STATE_FILE).read_text())["step"] == 4


def test_pretrain_at_a_sane_lr_passes_the_guard():
    config = tiny_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    ids = pattern_ids()
    model = pretrain(pretrain_cfg(), config, ids[:5000], ids[5000:], progress=False)
    assert not model.training


def distill_cfg(**kw) -> DistillConfig:
    base = dict(tokens=32 * 4 * 12, seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2, eval_tokens=1000,
                eval_every=3, checkpoint_every=4, loss={"kl": 1.0, "ce": 0.5, "hidden": 0.5})
    return DistillConfig(**{**base, **kw})


def pair():
    teacher = tiny_model(seed=0, vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    student = tiny_model(seed=1, vocab_size=64, n_layer=1, n_embd=16, n_head=2, n_positions=64)
    return student, teacher


def test_distill_at_lr_1_fails_loudly(tmp_path):
    with pytest.raises(DivergenceError, match=r"^distill: held-out ppl \S+ at step \d+ is above 10x the .* "
                                              r"not marked done; lower lr \(now 1\).*then rerun$"):
        distill(*pair(), pattern_ids(), distill_cfg(lr=1.0), checkpoint_dir=tmp_path / "ckpt", progress=False)


def test_distill_without_heldout_eval_is_guarded_on_the_training_loss():
    with pytest.raises(DivergenceError, match=r"training loss .* rose more than ln\(10\) above the first step's"):
        distill(*pair(), pattern_ids(), distill_cfg(lr=1.0, eval_tokens=0), progress=False)


def test_guard_bounds():
    guard = DivergenceGuard("distill", GuardConfig(), before_ppl=50.0, advice="lower lr")
    guard.check_eval(10, 499.0, "kept: x")  # under 10x: a bad patch, not yet divergence
    with pytest.raises(DivergenceError, match="above 10x the 50"):
        guard.check_eval(10, 501.0, "kept: x")
    with pytest.raises(DivergenceError, match="became nan"):
        guard.check_eval(10, math.nan, "kept: x")
    guard.check_end(20, 50.4, 20, "kept: x")  # within end_tolerance (1%)
    with pytest.raises(DivergenceError, match=r"made the model worse: held-out ppl 50 before training, 51 at the "
                                              r"best eval \(step 20\) after 20 steps \(guard.end_tolerance 0.01\); kept: x; "
                                              r"the step is not marked done; lower lr$"):
        guard.check_end(20, 51.0, 20, "kept: x")
    DivergenceGuard("pretrain", GuardConfig(), None, "").check_end(20, 1e9, None, "")  # nothing to compare to


def test_the_guard_key_is_validated_and_hash_neutral_at_its_defaults():
    assert "guard" not in distill_cfg().model_dump()
    assert distill_cfg(guard={"max_ppl_rise": 5}).model_dump()["guard"]["max_ppl_rise"] == 5
    with pytest.raises(ValueError, match="max_ppl_rise"):
        distill_cfg(guard={"max_ppl_rise": 0.5})
    with pytest.raises(ValueError, match="extra"):
        distill_cfg(guard={"colour": 1})


def test_a_full_disk_while_checkpointing_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    import errno

    from safetensors import SafetensorError

    def disk_full(tensors, path, metadata=None):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr("compress.checkpoint.save_file", disk_full)
    config = tiny_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    with pytest.raises(OSError) as e:
        pretrain(pretrain_cfg(), config, pattern_ids(), checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "ckpt.tmp" / "optimizer.safetensors")


def test_an_unreadable_checkpoint_is_a_user_error_naming_it(tmp_path):
    config = tiny_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    ckpt = tmp_path / "ckpt"
    pretrain(pretrain_cfg(tokens=32 * 8 * 5), config, pattern_ids(), checkpoint_dir=ckpt, progress=False)
    (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match=f"{ckpt}: the training checkpoint cannot be read .*delete it and rerun"):
        pretrain(pretrain_cfg(), config, pattern_ids(), checkpoint_dir=ckpt, progress=False)
