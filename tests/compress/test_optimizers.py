import pytest
import torch

from compress import optimizers
from compress.optimizers import Muon, muon_adamw
from tests.tiny_models import tiny_model


def _three_steps(make, seed=0):
    torch.manual_seed(seed)
    weights = [torch.nn.Parameter(torch.randn(shape)) for shape in ((16, 48), (48, 16), (16, 16))]
    opt = make(weights)
    for step in range(3):
        for w in weights:
            w.grad = torch.randn_like(w, generator=torch.Generator().manual_seed(step))
        opt.step()
    return [w.detach().clone() for w in weights]


def test_muon_is_torchs_muon_when_both_orthogonalize_in_bf16(monkeypatch):
    monkeypatch.setattr(optimizers, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    ours = _three_steps(lambda ps: Muon(ps, lr=1e-2, weight_decay=0.1))
    torchs = _three_steps(lambda ps: torch.optim.Muon(ps, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"))
    for a, b in zip(ours, torchs):
        assert torch.equal(a, b)


def test_muon_orthogonalizes_in_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    # torch's Muon casts to bf16 always: ~50x slower than fp32 matmuls on an AVX2-only CPU
    monkeypatch.setattr(optimizers, "cpu_bf16_flags", lambda: [])
    opt = Muon([torch.nn.Parameter(torch.randn(8, 8))], lr=1e-2, weight_decay=0.0)
    assert opt.ns_dtype == torch.float32
    fp32 = _three_steps(lambda ps: Muon(ps, lr=1e-2, weight_decay=0.1))
    monkeypatch.setattr(optimizers, "cpu_bf16_flags", lambda: ["amx_bf16"])
    bf16 = _three_steps(lambda ps: Muon(ps, lr=1e-2, weight_decay=0.1))
    for a, b in zip(fp32, bf16):  # the same update up to bf16 rounding of the iteration
        assert not torch.equal(a, b)
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2)


def test_muon_step_runs_a_closure_and_returns_its_loss():
    w = torch.nn.Parameter(torch.randn(4, 6))
    opt = Muon([w], lr=1e-2, weight_decay=0.0)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    assert opt.step(closure).item() == (before ** 2).sum().item()
    assert not torch.equal(w, before)


def test_orthogonalize_gives_singular_values_near_one():
    update = torch.randn(32, 96, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(optimizers.orthogonalize(update, torch.float32))
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic iteration's band, not exactly 1


@pytest.mark.parametrize("bf16", [False, True])
def test_muon_adamw_splits_block_matrices_from_the_rest(monkeypatch, bf16):
    monkeypatch.setattr(optimizers, "cpu_bf16_flags", lambda: ["avx512_bf16"] if bf16 else [])
    model = tiny_model(n_layer=2)
    opt = muon_adamw(model, 1e-3, 0.1)
    adam, muon = opt.optimizers
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_ids}
    assert names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert muon.ns_dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert len(opt.param_groups) == len(adam.param_groups) + len(muon.param_groups)
