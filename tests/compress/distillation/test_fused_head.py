"""The fused, chunked head losses equal the plain ones (values and gradients) on tiny models."""

import pytest
import torch

from compress.distillation import DistillConfig
from compress.distillation.fused_head import fused_head_losses
from compress.distillation.losses import ce_loss, kl_loss
from compress.distillation.loop import Distiller
from tests.tiny_models import tiny_model


def _leaves(seed: int, n: int = 37, c: int = 16, ct: int = 24, v: int = 101):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, c, generator=g) * 2).requires_grad_(True)
    w = (torch.randn(v, c, generator=g) * 0.5).requires_grad_(True)
    th, tw = torch.randn(n, ct, generator=g) * 2, torch.randn(v, ct, generator=g) * 0.5
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, th, tw, y


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk", [1, 8, 37, 512])  # one row, uneven chunks, exactly N, more than N
def test_fused_kl_and_ce_equal_the_plain_losses_and_their_gradients(temperature, chunk):
    h, w, th, tw, y = _leaves(0)
    plain_kl = kl_loss(h @ w.t(), th @ tw.t(), temperature)
    plain_ce = ce_loss(h @ w.t(), y)
    (plain_kl + 0.3 * plain_ce).backward()
    ref = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    terms = fused_head_losses(h, w, th, tw, y, temperature, chunk=chunk)
    assert set(terms) == {"kl", "ce"}
    torch.testing.assert_close(terms["kl"], plain_kl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["ce"], plain_ce.detach(), rtol=1e-5, atol=1e-6)
    (terms["kl"] + 0.3 * terms["ce"]).backward()
    torch.testing.assert_close(h.grad, ref[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, ref[1], rtol=1e-4, atol=1e-6)


def test_fused_single_terms_and_no_grad():
    h, w, th, tw, y = _leaves(1)
    only_kl = fused_head_losses(h, w, th, tw, None, 1.0, chunk=5)
    assert set(only_kl) == {"kl"}
    only_kl["kl"].backward()
    ref = h.grad.clone()
    h.grad = None
    kl_loss(h @ w.t(), th @ tw.t(), 1.0).backward()
    torch.testing.assert_close(ref, h.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        only_ce = fused_head_losses(h, w, None, None, y, 1.0, chunk=5)
    assert set(only_ce) == {"ce"} and not only_ce["ce"].requires_grad
    torch.testing.assert_close(only_ce["ce"], ce_loss(h @ w.t(), y).detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"teacher_h \(kl\) and/or targets"):
        fused_head_losses(h, w, None, None, None, 1.0)


def _distiller_grads(fused: bool, loss: dict) -> tuple[float, dict, dict[str, torch.Tensor]]:
    teacher = tiny_model(seed=1).eval().requires_grad_(False)  # 2 x 64, vocab 256
    student = tiny_model(seed=2, n_embd=32, n_head=2).train()
    cfg = DistillConfig(temperature=2.0, loss=loss, fused_head=fused, seq_len=16, batch_tokens=64)
    layers = [0, 1] if loss.get("hidden") else []
    torch.manual_seed(0)
    module = Distiller(student, cfg, layers, teacher.config.n_embd)
    x = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(4))
    x, y = x[:, :-1], x[:, 1:]
    with torch.no_grad():
        t_out = teacher.transformer(input_ids=x, output_hidden_states=True) if fused else \
            teacher(input_ids=x, output_hidden_states=True)
    t_last = t_out.last_hidden_state if fused else t_out.logits
    total, terms = module(x, y, t_last, t_out.hidden_states, teacher.lm_head.weight if fused else None)
    total.backward()
    return float(total.detach()), {k: float(v.detach()) for k, v in terms.items()}, \
        {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", [{"kl": 1.0}, {"kl": 1.0, "ce": 0.5, "hidden": 0.1}, {"kl": 0.0, "ce": 1.0}])
def test_distiller_with_fused_head_matches_the_plain_distiller(loss):
    total, terms, grads = _distiller_grads(False, loss)
    f_total, f_terms, f_grads = _distiller_grads(True, loss)
    assert f_total == pytest.approx(total, rel=1e-5)
    assert f_terms == pytest.approx(terms, rel=1e-5)
    assert set(f_grads) == set(grads) and "student.transformer.wte.weight" in grads
    for name, g in grads.items():
        torch.testing.assert_close(f_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_default_fused_head_is_hashed_and_false_keeps_the_plain_heads_hash():
    # null (fused on CPU) is new behaviour: plans from before, whose results came from the plain head,
    # get a new hash and rerun; `fused_head: false` is the plain head and keeps their old hash
    assert DistillConfig().model_dump(mode="json")["fused_head"] is None
    assert "fused_head" not in DistillConfig(fused_head=False).model_dump(mode="json")
    assert DistillConfig(fused_head=True).model_dump(mode="json")["fused_head"] is True
