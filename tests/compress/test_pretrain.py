import math

import pytest
import torch

from compress.checkpoint import load_checkpoint
from compress.source_config import PretrainConfig, TrainTokenizer
from compress.pretrain import pretrain, train_tokenizer
from compress.training import adamw, heldout_loss, lr_at, sample_batch
from tests.tiny_models import tiny_config


def _setup():
    ids = torch.randint(0, 64, (5000,), generator=torch.Generator().manual_seed(0))
    ids[1::2] = (ids[::2] + 1) % 64  # a learnable pattern: every odd token follows from the one before
    cfg = PretrainConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64, seq_len=32, batch_size=8,
                         tokens=32 * 8 * 12, lr=5e-3, warmup_steps=2, checkpoint_every=4)
    return ids, cfg, tiny_config(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls(optimizer):
    ids, cfg, config = _setup()
    cfg = cfg.model_copy(update={"optimizer": optimizer})
    losses = []
    pretrain(cfg, config, ids, progress=False, on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 0.3


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_killed_training_resumes_to_the_same_weights(tmp_path, optimizer):
    ids, cfg, config = _setup()
    cfg = cfg.model_copy(update={"optimizer": optimizer})
    straight = pretrain(cfg, config, ids, progress=False)

    def die_at_6(step, loss):
        if step == 6:
            raise KeyboardInterrupt  # as if the process were killed after step 6 (checkpoint at 4)

    ckpt = tmp_path / "ckpt"
    try:
        pretrain(cfg, config, ids, checkpoint_dir=ckpt, progress=False, on_step=die_at_6)
    except KeyboardInterrupt:
        pass
    resumed_from = []
    resumed = pretrain(cfg, config, ids, checkpoint_dir=ckpt, progress=False,
                       on_step=lambda step, loss: resumed_from.append(step))
    assert resumed_from[0] == 5  # restarted after the step-4 checkpoint, not from scratch
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_restores_optimizer_moments(tmp_path):
    ids, cfg, config = _setup()
    pretrain(cfg.model_copy(update={"tokens": 32 * 8 * 5}), config, ids, checkpoint_dir=tmp_path / "c",
             progress=False)
    model = pretrain(cfg.model_copy(update={"tokens": 32 * 8 * 1}), config, ids, progress=False).train()
    opt = adamw(model, 1e-3, 0.1)
    state = load_checkpoint(tmp_path / "c", model, opt)
    assert state["step"] == 4
    assert all("exp_avg" in opt.state[p] for p in model.parameters())


def test_muon_trains_the_block_matrices_and_its_momentum_is_checkpointed(tmp_path):
    from compress.optimizers import block_matrices, muon_adamw

    ids, cfg, config = _setup()
    cfg = cfg.model_copy(update={"optimizer": "muon", "tokens": 32 * 8 * 5})
    pretrain(cfg, config, ids, checkpoint_dir=tmp_path / "c", progress=False)
    model = pretrain(cfg.model_copy(update={"tokens": 32 * 8 * 1}), config, ids, progress=False).train()
    opt = muon_adamw(model, 1e-3, 0.1)
    matrices = {id(p) for p in block_matrices(model)}
    assert {type(o).__name__ for o in opt.optimizers} == {"AdamW", "Muon"}
    assert len(matrices) == 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj of the one block
    assert load_checkpoint(tmp_path / "c", model, opt)["step"] == 4
    for p in model.parameters():
        assert ("momentum_buffer" if id(p) in matrices else "exp_avg") in opt.state[p]


def test_schedule_and_batches():
    assert lr_at(0, 100, 1.0, 10, 0.1) == 0.1
    assert lr_at(9, 100, 1.0, 10, 0.1) == 1.0
    assert math.isclose(lr_at(100, 100, 1.0, 10, 0.1), 0.1)
    ids = torch.arange(1000)
    a, b = sample_batch(ids, 4, 16, seed=1, step=3), sample_batch(ids, 4, 16, seed=1, step=3)
    assert torch.equal(a, b) and a.shape == (4, 17)
    assert torch.equal(a[:, 1:], a[:, :-1] + 1)  # contiguous windows of the stream
    assert not torch.equal(a, sample_batch(ids, 4, 16, seed=1, step=4))


def test_tokenizer_round_trips_text():
    text = "The quick brown fox jumps over the lazy dog.\n\n" * 50
    tok = train_tokenizer(text, TrainTokenizer(vocab_size=300, min_frequency=1))
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges were learned
    assert tok.eos_token == "<|endoftext|>" and tok.convert_tokens_to_ids("<|endoftext|>") == tok.eos_token_id


def test_heldout_loss_of_trained_beats_untrained():
    ids, cfg, config = _setup()
    trained = pretrain(cfg, config, ids, progress=False)
    torch.manual_seed(0)
    from transformers import GPT2LMHeadModel

    untrained = GPT2LMHeadModel(config)
    assert heldout_loss(trained, ids, 32) < heldout_loss(untrained, ids, 32)
