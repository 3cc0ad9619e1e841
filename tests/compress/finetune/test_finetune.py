"""Fine-tuning (full and LoRA) through the one training loop: early stopping, adapters, merge, resume."""

import pytest
import torch

from compress.checkpoint import STATE_FILE
from compress.errors import UserError
from compress.finetune import loop as ft_loop
from compress.finetune.config import FinetuneConfig
from compress.finetune.loop import run_finetune
from tests.tiny_models import tiny_model

pytest.importorskip("peft")


def pattern_ids(n=6000, vocab=64, shift=1):
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))
    ids[1::2] = (ids[::2] + shift) % vocab  # every odd token follows from the one before
    return ids


def model():
    return tiny_model(seed=0, vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=64)


def cfg(**kw) -> FinetuneConfig:
    base = dict(data={"builtin": "python-docs"}, tokens=32 * 4 * 12, seq_len=32, batch_size=4, lr=3e-3,
                warmup_steps=2, eval_every=4, eval_tokens=512, checkpoint_every=4, patience=None)
    return FinetuneConfig(**{**base, **kw})


def test_full_finetuning_lowers_heldout_ppl_and_trains_every_weight():
    m = model()
    n = sum(p.numel() for p in m.parameters())
    out, r = run_finetune(m, pattern_ids(), cfg(), progress=False)
    assert r.after["ppl"] < 0.9 * r.before["ppl"] and r.steps == 12 and r.best_step == 12
    assert r.trainable_params == r.total_params == n and not r.lora and r.precision == "fp32"
    assert type(out).__name__ == "GPT2LMHeadModel"


def test_early_stopping_fires_on_a_rising_heldout_loss():
    m = model()
    snapshots = {}

    def spoil_after_step_2(step, terms):
        snapshots[step] = {k: v.clone() for k, v in m.state_dict().items()}
        if step >= 2:  # from here on every step makes the held-out loss rise
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.2 * torch.randn_like(p))

    c = cfg(eval_every=1, patience=2, tokens=32 * 4 * 40, guard={"max_ppl_rise": 1e6, "end_tolerance": 10})
    out, r = run_finetune(m, pattern_ids(), c, progress=False, on_step=spoil_after_step_2)
    assert r.stopped_early and r.best_step == 2 and r.steps == 4  # two evals without improvement after step 2
    for k, v in out.state_dict().items():  # the best held-out weights are handed on, not the last
        assert torch.equal(v, snapshots[2][k]), k


def test_lora_trains_only_the_adapters_and_the_merge_changes_only_their_layers(tmp_path):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lora = {"r": 4, "targets": ["attn.c_attn", "mlp.c_fc"]}
    out, r = run_finetune(m, pattern_ids(), cfg(lora=lora), adapter_dir=tmp_path / "adapter", progress=False)
    # c_attn 32 -> 96 and c_fc 32 -> 128: r * (in + out) each, in 2 blocks
    assert r.lora and r.trainable_params == 2 * 4 * ((32 + 96) + (32 + 128))
    assert r.total_params == sum(v.numel() for k, v in before.items() if k != "lm_head.weight")
    assert r.after["ppl"] < r.before["ppl"]
    after = out.state_dict()
    assert set(after) == set(before)  # a stock GPT-2: no lora_A / lora_B / base_layer left
    for k, v in before.items():
        merged_into = (".attn.c_attn.weight" in k or ".mlp.c_fc.weight" in k)
        assert torch.equal(after[k], v) != merged_into, k
    assert r.merge_max_abs_diff is not None and r.merge_max_abs_diff < 1e-5


def test_the_saved_adapter_loads_in_peft_and_equals_the_merged_model(tmp_path):
    from peft import PeftModel

    out, _ = run_finetune(model(), pattern_ids(), cfg(lora={"r": 2}), adapter_dir=tmp_path / "adapter",
                          progress=False)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    adapted = PeftModel.from_pretrained(model(), tmp_path / "adapter").eval()
    x = pattern_ids()[:64].view(2, 32)
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=x).logits, out(input_ids=x).logits, atol=1e-5)


def test_a_merge_that_changes_the_logits_is_refused(monkeypatch):
    from peft.tuners.lora import LoraModel  # PeftModel.merge_and_unload is LoraModel's

    real = LoraModel.merge_and_unload

    def broken_merge(self, *a, **kw):
        merged = real(self, *a, **kw)
        with torch.no_grad():
            merged.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", broken_merge)
    with pytest.raises(UserError, match="merging the adapters changed the logits"):
        run_finetune(model(), pattern_ids(), cfg(lora={"r": 2}, tokens=1000), progress=False)


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.1}])
def test_killed_finetuning_resumes_to_the_same_weights(tmp_path, lora):
    c = cfg(lora=lora, eval_every=3)
    straight, _ = run_finetune(model(), pattern_ids(), c, progress=False)

    def die_at_6(step, terms):
        if step == 6:
            raise KeyboardInterrupt  # as if killed after step 6 (last checkpoint: step 4)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_finetune(model(), pattern_ids(), c, checkpoint_dir=ckpt, progress=False, on_step=die_at_6)
    assert (ckpt / STATE_FILE).exists()
    steps = []
    resumed, r = run_finetune(model(), pattern_ids(), c, checkpoint_dir=ckpt, progress=False,
                              on_step=lambda step, terms: steps.append(step))
    assert steps[0] == 5 and r.steps == 12
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_heldout_split_and_short_texts():
    ids = pattern_ids(1000)
    train, held = ft_loop.split_heldout(ids, None, cfg(heldout_fraction=0.2))
    assert held.numel() == 200 and torch.equal(torch.cat([train, held]), ids)
    train, held = ft_loop.split_heldout(ids, ids[:100], cfg(heldout={"builtin": "python-docs"}))
    assert train.numel() == 1000 and held.numel() == 100
    with pytest.raises(UserError, match="finetune.heldout_fraction: 4 held-out tokens"):
        ft_loop.split_heldout(ids[:40], None, cfg())
    with pytest.raises(UserError, match="finetune.seq_len"):
        run_finetune(model(), ids, cfg(seq_len=128, eval_tokens=512), progress=False)


def test_config_checks():
    with pytest.raises(ValueError, match="heldout or heldout_fraction"):
        cfg(heldout={"builtin": "python-docs"}, heldout_fraction=0.2)
    with pytest.raises(ValueError, match="distinct"):
        cfg(lora={"targets": ["mlp.c_fc", "mlp.c_fc"]})
    with pytest.raises(ValueError):
        cfg(lora={"targets": ["c_attn"]})  # a projection name with its module: attn.c_attn
    assert "LoRA r=8" in cfg(lora={}).describe()
