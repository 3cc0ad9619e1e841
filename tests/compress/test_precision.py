"""bf16 autocast where the CPU has it, fp32 where it does not, and the run records which."""

import pytest
import torch

from compress import precision
from compress.finetune.config import FinetuneConfig
from compress.finetune.loop import run_finetune
from tests.tiny_models import tiny_model
from compress.precision import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(flags):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: list(flags))
    return set_flags


def test_bf16_on_a_cpu_without_it_falls_back_to_fp32_and_says_so(cpu_flags):
    cpu_flags([])
    p = resolve_precision("bf16", CPU)
    assert p.dtype is None and p.name == "fp32" and "no avx512_bf16 or amx_bf16" in p.why


def test_bf16_on_a_cpu_with_it_autocasts(cpu_flags):
    cpu_flags(["avx512_bf16"])
    p = resolve_precision("bf16", CPU)
    assert p.dtype == torch.bfloat16 and p.name == "bf16-autocast" and "avx512_bf16" in p.why


def test_the_defaults_and_cuda(cpu_flags):
    cpu_flags(["amx_bf16"])
    assert resolve_precision("auto", CPU).name == "fp32"  # bf16 is opt-in on CPU (docs/training.md)
    assert resolve_precision("off", CPU).name == "fp32" and resolve_precision("fp16", CPU).name == "fp32"
    assert resolve_precision("auto", CUDA).dtype == torch.bfloat16
    assert resolve_precision("fp16", CUDA).dtype == torch.float16
    assert resolve_precision("off", CUDA).dtype is None


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = precision.cpu_bf16_flags()
    assert set(flags) <= set(precision.CPU_BF16_FLAGS)


@pytest.mark.parametrize("flags, want", [([], "fp32"), (["avx512_bf16"], "bf16-autocast")])
def test_finetune_records_the_precision_it_trained_in(cpu_flags, flags, want):
    cpu_flags(flags)
    ids = torch.randint(0, 64, (3000,), generator=torch.Generator().manual_seed(0))
    cfg = FinetuneConfig(data={"builtin": "python-docs"}, tokens=1024, seq_len=32, batch_size=4, lr=1e-3,
                         eval_tokens=256, eval_every=4, amp="bf16")
    model = tiny_model(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    out, r = run_finetune(model, ids, cfg, progress=False)
    assert r.precision == want and all(p.dtype == torch.float32 for p in out.parameters())  # fp32 weights


def test_fused_gelu_is_the_same_function_and_is_put_back():
    from transformers import GPT2LMHeadModel
    from transformers.activations import NewGELUActivation

    from compress.precision import fused_gelu
    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    want = model(input_ids=ids).logits
    with fused_gelu(model):
        assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
        got = model(input_ids=ids).logits
    assert all(isinstance(block.mlp.act, NewGELUActivation) for block in model.transformer.h)
    assert torch.allclose(got, want, atol=1e-5)
