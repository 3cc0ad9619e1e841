"""Quantization-aware training keeps the quantize step's exact grid and does not make held-out loss worse."""

import copy

import pytest
import torch

from compress.errors import UserError
from compress.models import load_model, save_model
from compress.qat.config import QatConfig
from compress.qat.loop import FakeQuantLinear, run_qat, to_fake_quant
from compress.quantization import quantize
from compress.quantization.config import QuantizeConfig
from compress.quantization.modules import quant_linears
from compress.training import heldout_loss


@pytest.fixture(scope="module")
def text_ids(byte_tokenizer):
    from evalsuite.data import builtin_text, tokenize

    return tokenize(builtin_text("python-docs", "train")[:60_000], byte_tokenizer)


def quantized(model_dir, **kw):
    model = load_model(model_dir)
    return quantize(model, QuantizeConfig(**{"method": "rtn", "bits": 4, "group_size": 32, **kw}))


def cfg(**kw) -> QatConfig:
    base = dict(tokens=64 * 8 * 16, seq_len=64, batch_size=8, lr=1e-3, warmup_steps=2, eval_tokens=2048,
                eval_every=4, checkpoint_every=4)
    return QatConfig(**{**base, **kw})


def test_the_fake_quantized_model_is_the_quantized_model_before_training(trained_tiny):
    model = quantized(trained_tiny[0])
    x = torch.randint(0, 200, (2, 32))
    with torch.no_grad():
        want = model(input_ids=x).logits
        to_fake_quant(model)
        assert torch.equal(model(input_ids=x).logits, want)


@pytest.mark.parametrize("scales", ["frozen", "learned"])
def test_qat_keeps_the_exact_grid_and_lowers_heldout_loss(trained_tiny, text_ids, tmp_path, scales):
    model_dir, held = trained_tiny
    ptq = quantized(model_dir)
    before = {n: copy.deepcopy(m) for n, m in quant_linears(ptq).items()}
    ptq_loss = heldout_loss(ptq, held, 64)
    model, r = run_qat(ptq, load_model(model_dir), text_ids, cfg(scales=scales), progress=False)
    assert heldout_loss(model, held, 64) < ptq_loss  # unseen text: the quantized model got better
    assert r.after["kl"] < r.before["kl"] and 0 < r.codes_changed < r.codes_total
    # the model handed on: QuantLinears with the step's own scales and zero points, codes on its grid
    save_model(model, tmp_path / "qat")
    again = load_model(tmp_path / "qat")
    layers = quant_linears(again)
    assert set(layers) == set(before)
    for name, layer in layers.items():
        ref = before[name]
        assert torch.equal(layer.zeros, ref.zeros), name  # zero points never move
        if scales == "frozen":
            assert torch.equal(layer.scales, ref.scales), name
        else:  # learned: positive scales of the same shape, moved from the PTQ ones
            assert layer.scales.shape == ref.scales.shape and bool((layer.scales > 0).all()), name
            assert not torch.equal(layer.scales, ref.scales), name
        assert layer.q.dtype == torch.uint8 and int(layer.q.max()) <= 15, name
        x = torch.randn(3, layer.in_features)
        w = (layer.q.float().view(layer.out_features, -1, 32) - ref.zeros.float().unsqueeze(-1)) \
            * layer.scales.unsqueeze(-1)  # every weight = (code - zero) * scale of the stored grid
        assert torch.equal(layer(x), torch.nn.functional.linear(x, w.view(layer.out_features, -1), layer.bias)), name
    assert again.config.quantization_config == ptq.config.quantization_config  # same layout and settings


@pytest.mark.parametrize("learn_scales", [False, True])
def test_the_weights_handed_on_are_exactly_the_latent_weights_rounded(trained_tiny, text_ids, learn_scales):
    model = quantized(trained_tiny[0], sym=False)  # asymmetric: zero points other than 8
    layers = to_fake_quant(model, learn_scales=learn_scales)
    layer = next(iter(layers.values()))
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * 0.05)
        if learn_scales:
            layer.log_scale.add_(torch.randn_like(layer.log_scale) * 0.1)
        want = layer.quantized_weight()
        rec = layer.record()
    assert torch.equal(rec.dequantize(), want)  # what trained is what is stored, bit for bit
    assert torch.equal(rec.scales, layer.scales) and (not learn_scales or not torch.equal(rec.scales, layer.start_scales))


def test_learned_scales_get_the_codes_gradient_and_frozen_ones_none(trained_tiny):
    model = quantized(trained_tiny[0])
    ql = next(iter(quant_linears(model).values()))
    frozen, learned = FakeQuantLinear(ql), FakeQuantLinear(ql, learn_scales=True)
    assert frozen.log_scale is None and "log_scale" not in dict(frozen.named_parameters())
    x = torch.randn(4, ql.in_features)
    assert torch.equal(frozen(x), learned(x))  # log_scale starts at 0: the same PTQ model
    learned(x).pow(2).sum().backward()
    assert learned.log_scale.grad is not None and learned.log_scale.grad.abs().sum() > 0


def test_ce_only_qat_runs_without_the_teacher_and_no_objective_is_refused(trained_tiny, text_ids):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nothing to train toward"):
        cfg(kl=0.0, ce=0.0)
    ptq = quantized(trained_tiny[0])
    calls = []
    teacher = load_model(trained_tiny[0])
    teacher.register_forward_hook(lambda *a: calls.append(1))
    _, r = run_qat(ptq, teacher, text_ids, cfg(tokens=64 * 8 * 2, kl=0.0, ce=1.0, eval_tokens=0), progress=False)
    assert r.steps == 2 and not calls  # CE on data.train only: no teacher forward in training


def test_straight_through_gradients_reach_the_latent_weights_inside_the_range(trained_tiny):
    model = quantized(trained_tiny[0])
    layer = FakeQuantLinear(next(iter(quant_linears(model).values())))
    with torch.no_grad():
        layer.weight[0, 0] = 1e3  # far outside its group's range: clamped, no gradient
    layer(torch.randn(4, layer.weight.shape[1])).sum().backward()
    assert layer.weight.grad[0, 0] == 0 and layer.weight.grad[1:].abs().sum() > 0


def test_a_run_that_never_beats_the_ptq_codes_hands_them_on_unchanged(trained_tiny, text_ids):
    ptq = quantized(trained_tiny[0])
    codes = {n: m.q.clone() for n, m in quant_linears(ptq).items()}

    def spoil(step, terms):  # every step makes the model worse
        with torch.no_grad():
            for p in ptq.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))

    model, r = run_qat(ptq, load_model(trained_tiny[0]), text_ids, cfg(tokens=64 * 8 * 4, eval_every=2),
                       progress=False, on_step=spoil)
    assert r.best_step == 0 and r.codes_changed == 0
    assert all(torch.equal(m.q, codes[n]) for n, m in quant_linears(model).items())


def test_killed_qat_resumes_to_the_same_codes(trained_tiny, text_ids, tmp_path):
    c = cfg(tokens=64 * 8 * 6, eval_every=3, lr=3e-4)
    teacher = load_model(trained_tiny[0])
    straight, _ = run_qat(quantized(trained_tiny[0]), teacher, text_ids, c, progress=False)

    def die_at_5(step, terms):
        if step == 5:
            raise KeyboardInterrupt  # as if killed after step 5 (last checkpoint: step 4)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_qat(quantized(trained_tiny[0]), teacher, text_ids, c, checkpoint_dir=ckpt, progress=False,
                on_step=die_at_5)
    steps = []
    resumed, r = run_qat(quantized(trained_tiny[0]), teacher, text_ids, c, checkpoint_dir=ckpt, progress=False,
                         on_step=lambda s, t: steps.append(s))
    assert steps[0] == 5 and r.steps == 6
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_w8a8_trains_through_its_activation_scale_too(trained_tiny, text_ids):
    model_dir, held = trained_tiny
    ptq = quantize(load_model(model_dir), QuantizeConfig(method="smoothquant", calib_samples=8, calib_seq_len=64),
                   text_ids)
    scales = {n: (m.input_scale, m.scales.clone()) for n, m in quant_linears(ptq).items()}
    model, r = run_qat(ptq, load_model(model_dir), text_ids, cfg(lr=3e-4, scales="frozen"), progress=False)
    assert r.after["ppl"] <= r.before["ppl"] and r.codes_changed > 0
    for name, m in quant_linears(model).items():
        assert m.input_scale == scales[name][0] and torch.equal(m.scales, scales[name][1]), name


def test_an_unquantized_model_is_refused(trained_tiny, text_ids):
    with pytest.raises(UserError, match="no quantized block projections"):
        run_qat(load_model(trained_tiny[0]), load_model(trained_tiny[0]), text_ids, cfg(), progress=False)
