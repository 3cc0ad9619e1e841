from transformers import GPT2LMHeadModel

from compress.models import tiny_config
from evalsuite.metrics import gpt2_facts
from evalsuite.size import bytes_on_disk, count_parameters


def test_tied_head_counted_once(tiny):
    assert tiny.lm_head.weight is tiny.transformer.wte.weight
    assert count_parameters(tiny) == sum(p.numel() for p in tiny.parameters())
    assert count_parameters(tiny) < sum(p.numel() for p in tiny.state_dict().values())


def test_param_arithmetic_from_config_matches_model():
    for kwargs in ({}, {"n_inner": 96}, {"n_layer": 3, "n_embd": 48, "n_head": 6}):
        config = tiny_config(**kwargs)
        assert gpt2_facts(config.to_dict(), 0).params == count_parameters(GPT2LMHeadModel(config))


def test_bytes_on_disk(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "vocab.json").write_bytes(b"y" * 7)
    assert bytes_on_disk(tmp_path) == 107
    assert bytes_on_disk(tmp_path, weights_only=True) == 100
    assert bytes_on_disk(tmp_path / "a.safetensors") == 100
