"""Exactness: pruning structures that provably contribute nothing leaves the logits unchanged."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from compress import PruneConfig, prune
from compress.models import load_model, save_model
from compress.pruning import Shape, choose, param_count
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner
from tests.tiny_models import tiny_model

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def masked_layernorms(model, keep):
    """Make every LayerNorm normalise over the `keep` channels only: what slicing the residual stream does.

    The only effect of removing an always-zero residual channel that weights cannot undo is that
    LayerNorm's mean and variance are then taken over fewer channels."""
    def hook(module, args, out):
        y = F.layer_norm(args[0][..., keep], (len(keep),), module.weight[keep], module.bias[keep], module.eps)
        full = torch.zeros_like(out)
        full[..., keep] = y  # the dropped channels' outputs are 0 anyway (their gamma and beta are 0)
        return full
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]


def test_dropping_zero_blocks_and_mlp_channels_is_exact(plant):
    model = tiny_model(seed=1, n_layer=3)
    planted_mlp = {l: list(range(l, 256, 4)) for l in range(3)}  # 64 of 256 channels, different per block
    plant(model, 0.0, blocks=[1], mlp=planted_mlp)
    before = logits(model)

    keep = choose(model, PruneConfig(importance="magnitude", layers=1, mlp=0.25))
    small = prune(model, PruneConfig(importance="magnitude", layers=1, mlp=0.25))

    assert keep.layers == [0, 2]
    for new, old in enumerate(keep.layers):
        assert set(keep.mlp[new].tolist()) == set(range(256)) - set(planted_mlp[old])
    torch.testing.assert_close(logits(small), before, atol=1e-5, rtol=0)
    V, P, E, I, L = 256, 128, 64, 192, 2
    assert small.num_parameters() == V * E + P * E + L * (4 * E * E + 2 * E * I + 9 * E + I) + 2 * E == 108_160


def test_removing_zero_heads_and_residual_channels_is_exact_up_to_layernorm(plant):
    model = tiny_model(seed=2, n_layer=3)
    planted_embd = list(range(3, 64, 4))  # 16 of 64 residual channels: width 0.25 keeps 3 of 4 heads
    planted_heads = {0: [1], 1: [3], 2: [0]}
    planted_mlp = {l: list(range(2 * l, 256, 8)) for l in range(3)}  # 32 of 256
    plant(model, 0.0, blocks=[2], heads=planted_heads, mlp=planted_mlp, embd=planted_embd)
    cfg = PruneConfig(importance="magnitude", layers=1, width=0.25, mlp=0.125, round_to=1)  # exactly the 32 planted

    keep = choose(model, cfg)
    small = prune(model, cfg)

    kept_embd = [k for k in range(64) if k not in planted_embd]
    assert keep.layers == [0, 1] and keep.embd.tolist() == kept_embd
    assert keep.heads.tolist() == [[0, 2, 3], [0, 1, 2]]
    assert small.config.n_head == 3 and small.config.n_embd == 48 and small.config.n_inner == 224
    handles = masked_layernorms(model, torch.tensor(kept_embd))
    reference = logits(model)
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits(small), reference, atol=1e-5, rtol=0)
    # ...and LayerNorm over fewer channels is the one thing that differs from the unpruned model.
    assert not torch.allclose(logits(small), logits(model), atol=1e-5)
    assert small.num_parameters() == param_count(Shape(2, 3, 16, 224, 256, 128))


def test_pruning_a_live_structure_changes_the_logits(plant):
    """The exactness tests can fail: the same cut without the planted zeros moves the logits."""
    model = tiny_model(seed=1, n_layer=3)
    small = prune(model, PruneConfig(importance="magnitude", layers=1, mlp=0.25))
    assert (logits(small) - logits(model)).abs().max() > 1e-3


def test_inverse_layer_idx_scaling_is_folded_into_the_moved_blocks(plant):
    config = tiny_model(n_layer=3).config
    config.scale_attn_by_inverse_layer_idx = True
    torch.manual_seed(3)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval()  # sdpa ignores the flag
    plant(model, 0.0, blocks=[0])
    small = prune(model, PruneConfig(importance="magnitude", layers=1))
    assert small.config.n_layer == 2
    torch.testing.assert_close(logits(small), logits(model), atol=1e-5, rtol=0)


def test_zero_ratios_return_the_model_unchanged(tiny):
    same = prune(tiny, PruneConfig())
    assert same is not tiny and same.config.to_dict() == tiny.config.to_dict()
    for (k, a), b in zip(tiny.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k


def test_round_trip_through_stock_from_pretrained(trained_tiny, tmp_path):
    model_dir, held = trained_tiny
    model = load_model(model_dir)
    small = prune(model, PruneConfig(importance="activation", width=0.5, mlp=0.5, layers=1, calib_tokens=1024,
                                     seq_len=64), held)
    save_model(small, tmp_path)
    again = GPT2LMHeadModel.from_pretrained(tmp_path).eval()  # stock class, no code of ours
    assert (again.config.n_layer, again.config.n_head, again.config.n_embd, again.config.n_inner) == (1, 2, 32, 128)
    ids = held[:64][None]
    torch.testing.assert_close(logits(again, ids), logits(small, ids), atol=0, rtol=0)
    result = perplexity(TorchRunner(load_model(tmp_path)), held[:2000], seq_len=64, progress=False)
    assert 1 < result.ppl < 260  # still a language model over a 260-token vocabulary


@pytest.mark.parametrize("ratio", [{"width": 0.25}, {"mlp": 0.5}, {"params": 0.6}])
def test_pruned_model_keeps_dtype_and_generates(tiny, ratio):
    small = prune(tiny.to(torch.float64), PruneConfig(importance="random", **ratio))
    assert next(small.parameters()).dtype == torch.float64 and small.num_parameters() < tiny.num_parameters()
    out = small.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_pruned_model_exports_to_onnx_with_kv_cache(tmp_path):
    """The pruned model is stock GPT-2 to the exporter too: ONNX Runtime gives torch's logits."""
    pytest.importorskip("onnxruntime")
    from export.onnx import export_decoder, save_onnx
    from export.ort_runner import OrtRunner

    small = prune(tiny_model(seed=5), PruneConfig(importance="magnitude", width=0.5, mlp=0.5, layers=1))
    path = save_onnx(export_decoder(small, opset=18), tmp_path / "model.onnx")
    runner = OrtRunner(path)
    assert (runner.n_head, runner.head_dim) == (2, 16)
    prefill, past = runner.forward(IDS[:1, :8])
    step, _ = runner.forward(IDS[:1, 8:9], past)
    torch.testing.assert_close(torch.cat([prefill, step], 1), logits(small, IDS[:1, :9]), atol=1e-4, rtol=0)
