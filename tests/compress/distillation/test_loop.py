import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from compress import DistillConfig, distill
from compress.checkpoint import STATE_FILE
from compress.distillation import StudentInit, run_distillation, student_from_teacher
from compress.distillation.evaluate import heldout_eval
from compress.errors import UserError
from compress.models import load_model
from compress.training import heldout_loss
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def text_ids(byte_tokenizer):
    from evalsuite.data import builtin_text, tokenize

    return tokenize(builtin_text("python-docs", "train")[:60_000], byte_tokenizer)


def pattern_ids(n=6000, vocab=64):
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))
    ids[1::2] = (ids[::2] + 1) % vocab  # every odd token follows from the one before
    return ids


def small_cfg(**kw) -> DistillConfig:
    base = dict(tokens=32 * 4 * 10, seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2, eval_tokens=0,
                checkpoint_every=4, loss={"kl": 1.0, "ce": 0.5, "hidden": 0.5})
    return DistillConfig(**{**base, **kw})


def pair():
    teacher = tiny_model(seed=0, vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    student = tiny_model(seed=1, vocab_size=64, n_layer=1, n_embd=16, n_head=2, n_positions=64)
    return student, teacher


def test_student_gets_closer_to_a_trained_teacher(trained_tiny, text_ids):
    model_dir, held = trained_tiny
    teacher = load_model(model_dir)
    student = student_from_teacher(teacher, StudentInit(layers=[1]))  # drop the first block
    before = heldout_eval(student, teacher, held[:4097], 64)
    cfg = DistillConfig(tokens=64 * 8 * 16, seq_len=64, batch_size=8, lr=3e-3, warmup_steps=3,
                        temperature=2.0, loss={"kl": 1.0, "ce": 0.1, "hidden": 0.1}, eval_tokens=2048,
                        eval_every=8)
    losses = []
    student, result = run_distillation(student, teacher, text_ids, cfg, progress=False,
                                       on_step=lambda step, terms: losses.append(terms["kl"]))
    after = heldout_eval(student, teacher, held[:4097], 64)
    assert after["kl"] < 0.7 * before["kl"]  # KL to the teacher on unseen text fell
    assert after["ppl"] < before["ppl"]  # and so did the student's perplexity
    assert heldout_loss(student, held, 64) < heldout_loss(student_from_teacher(teacher, StudentInit(layers=[1])),
                                                          held, 64)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert result.steps == 16 and result.tokens == 64 * 8 * 16 and result.after["ppl"] < result.before["ppl"]


def test_killed_distillation_resumes_to_the_same_weights(tmp_path):
    ids = pattern_ids()
    cfg = small_cfg(eval_tokens=1000, eval_every=3)  # hidden loss across widths: projections are checkpointed
    straight = distill(*pair(), ids, cfg, progress=False)

    def die_at_6(step, terms):
        if step == 6:
            raise KeyboardInterrupt  # as if killed after step 6 (last checkpoint: step 4)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        distill(*pair(), ids, cfg, checkpoint_dir=ckpt, progress=False, on_step=die_at_6)
    assert (ckpt / STATE_FILE).exists()
    steps = []
    resumed = distill(*pair(), ids, cfg, checkpoint_dir=ckpt, progress=False,
                      on_step=lambda step, terms: steps.append(step))
    assert steps[0] == 5  # continued after the step-4 checkpoint, not from scratch
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    student, teacher = pair()

    def poison_teacher(step, terms):
        if step == 4:
            with torch.no_grad():
                teacher.transformer.ln_f.weight.fill_(float("nan"))

    ckpt = tmp_path / "ckpt"
    with pytest.raises(UserError, match=r"non-finite at step 5 \(kl=nan.*kept: the last checkpoint \(step 4\) in"):
        distill(student, teacher, pattern_ids(), small_cfg(), checkpoint_dir=ckpt, progress=False,
                on_step=poison_teacher)
    assert json.loads((ckpt / STATE_FILE).read_text())["step"] == 4
    kept = load_file(str(ckpt / "model" / "model.safetensors"))
    assert kept and all(torch.isfinite(t).all() for t in kept.values())


def test_early_stopping_returns_the_best_weights():
    student, teacher = pair()
    best = {}

    def spoil_after_first_eval(step, terms):
        if step == 1:
            best.update({k: v.clone() for k, v in student.state_dict().items()})
            with torch.no_grad():
                for p in student.parameters():
                    p.add_(torch.randn_like(p))  # held-out ppl gets much worse

    # the spoiled eval is far above the guard's default bound; this test is about early stopping
    cfg = small_cfg(lr=1e-7, warmup_steps=0, eval_tokens=1000, eval_every=1, patience=1, tokens=32 * 4 * 50,
                    guard={"max_ppl_rise": 1e6})
    out, result = run_distillation(student, teacher, pattern_ids(), cfg, progress=False,
                                   on_step=spoil_after_first_eval)
    assert result.stopped_early and result.steps == 2 and result.best_step == 1
    for k, v in out.state_dict().items():
        assert torch.allclose(v, best[k], atol=1e-5), k


def test_the_distilled_student_is_a_stock_gpt2(tmp_path):
    student, teacher = pair()  # widths differ (16 vs 32): the hidden loss trains projections
    out = distill(student, teacher, pattern_ids(), small_cfg(tokens=1000), progress=False)
    out.save_pretrained(tmp_path)
    again = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert set(again.state_dict()) == set(GPT2LMHeadModel(student.config).state_dict())
    x = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, out(input_ids=x).logits, atol=1e-6)


def test_mismatched_pairs_and_short_text_are_user_errors():
    student, teacher = pair()
    with pytest.raises(UserError, match="vocab"):
        distill(tiny_model(vocab_size=100, n_positions=64), teacher, pattern_ids(), small_cfg(), progress=False)
    with pytest.raises(UserError, match="hidden_layers"):
        distill(student, teacher, pattern_ids(), small_cfg(hidden_layers=[0, 1]), progress=False)
    with pytest.raises(UserError, match="training text has 90 tokens"):
        distill(student, teacher, pattern_ids(90), small_cfg(eval_tokens=64), progress=False)
    assert math.isfinite(heldout_eval(student, teacher, pattern_ids(200), 32)["kl"])


@pytest.mark.parametrize("fused_head, bf16_cpu, want", [(None, False, True), (None, True, False),
                                                         (False, False, False), (True, True, True)])
def test_the_fused_head_is_on_by_default_where_training_is_fp32(monkeypatch, fused_head, bf16_cpu, want):
    from compress import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"] if bf16_cpu else [])
    student, teacher = pair()
    cfg = small_cfg(tokens=1024, fused_head=fused_head, amp="bf16" if bf16_cpu else "auto")
    _, result = run_distillation(student, teacher, pattern_ids(), cfg, progress=False)
    assert result.fused_head is want
    assert result.precision == ("bf16-autocast" if bf16_cpu else "fp32")


def test_the_estimate_counts_a_chunk_of_logits_when_the_head_is_fused():
    from compress.cost import Rates, estimate
    from compress.model_shape import Shape
    from compress.plan_state import PlanState

    shape = Shape(n_layer=4, n_head=6, head_dim=32, n_inner=512, vocab_size=4096, n_positions=256)
    state = PlanState(train_data=True, eval_seq_len=None, shape=shape, base=shape)
    rates = Rates(train_flops=1e11, forward_flops=1e11)
    peaks = {f: estimate("d", small_cfg(batch_size=64, seq_len=256, fused_head=f).work(), state, state, rates).peak_bytes
             for f in (None, False)}
    # 16,384 positions x 4096 x 4 B x 3 logits tensors (768 MiB) against six chunks of 512
    assert peaks[False] - peaks[None] > 700 * 2**20


def test_distillation_with_muon_lowers_the_kl():
    student, teacher = pair()
    kls = []
    _, result = run_distillation(student, teacher, pattern_ids(), small_cfg(optimizer="muon", loss={"kl": 1.0}),
                                 progress=False, on_step=lambda step, terms: kls.append(terms["kl"]))
    assert result.steps == 10 and sum(kls[-3:]) < sum(kls[:3])
