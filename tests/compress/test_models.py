import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from compress.errors import UserError
from compress.models import check_gpt2_dir, load_model, load_tokenizer, save_model


def test_save_and_reload_with_stock_from_pretrained(tiny, byte_tokenizer, tmp_path):
    save_model(tiny, tmp_path, byte_tokenizer)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    ids = torch.randint(0, 256, (1, 12))
    stock = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True).eval()
    ours = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, tiny(ids).logits)
        assert torch.equal(ours(ids).logits, tiny(ids).logits)
    assert len(load_tokenizer(tmp_path)) == len(byte_tokenizer)


def test_half_precision_checkpoint_loads_as_fp32(tiny, tmp_path):
    tiny.half().save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/model")


def test_non_gpt2_dir_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="model_type is 'llama'"):
        check_gpt2_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        check_gpt2_dir(tmp_path)


def test_config_without_weights_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="no weights"):
        check_gpt2_dir(tmp_path)


def test_truncated_and_corrupt_safetensors_are_refused_before_loading(tiny, tmp_path, no_model_loads):
    save_model(tiny, tmp_path)
    weights = tmp_path / "model.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[:-100])
    with pytest.raises(UserError, match=r"model.safetensors: not a readable safetensors file \(the header describes "
                                        r"[\d,]+ bytes of tensors, the file holds [\d,]+\); it is truncated or corrupt"):
        check_gpt2_dir(tmp_path)
    weights.write_bytes(b"\x07" * 64)
    with pytest.raises(UserError, match="header length .* exceeds the file's 64 bytes"):
        load_model(tmp_path)
    weights.write_bytes(full[:8] + b"\xff" * (len(full) - 8))
    with pytest.raises(UserError, match="its header is not JSON"):
        load_model(tmp_path)


def test_pickle_weights_are_refused_before_transformers_sees_them(tiny, tmp_path, monkeypatch):
    tiny.config.save_pretrained(tmp_path)
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("the pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("transformers.GPT2LMHeadModel.from_pretrained", refuse)
    with pytest.raises(UserError, match=r"the weights are a pickle \(pytorch_model.bin\), which can run code when "
                                        r"loaded, so gpt2-edge refuses it; convert it to model.safetensors"):
        load_model(tmp_path)


def test_unreadable_config_json(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="config.json: expected a JSON object, got list"):
        check_gpt2_dir(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(UserError, match=r"config.json: not UTF-8 JSON \(byte 0xff at offset 0\)"):
        check_gpt2_dir(tmp_path)


def test_weights_that_do_not_match_config_json(tiny, tmp_path):
    save_model(tiny, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 128}))
    # refused from the headers, before transformers builds anything
    with pytest.raises(UserError, match=r"'transformer.h.0.attn.c_attn.bias' has shape \[192\], config.json implies \[384\]"):
        load_model(tmp_path)


def test_missing_and_corrupt_tokenizer_files(tiny, byte_tokenizer, tmp_path):
    save_model(tiny, tmp_path)
    with pytest.raises(UserError, match=r"no tokenizer files \(tokenizer.json, or vocab.json and merges.txt\)"):
        load_tokenizer(tmp_path)
    byte_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match=r"tokenizer.json: invalid JSON"):
        load_tokenizer(tmp_path)


def test_saved_config_does_not_name_where_the_model_came_from(tiny, tmp_path):
    from compress import QuantizeConfig, quantize

    tiny.config._name_or_path = str(tmp_path / "some-run" / "01-prune" / "model")
    for name, model in (("plain", tiny), ("quantized", quantize(tiny, QuantizeConfig(method="rtn", bits=8)))):
        save_model(model, tmp_path / name)
        assert "_name_or_path" not in json.loads((tmp_path / name / "config.json").read_text()), name
    assert load_model(tmp_path / "quantized") is not None  # still reloads


def test_a_sharded_checkpoint_missing_a_shard_is_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and check_gpt2_dir(tmp_path) == tmp_path
    shards[-1].unlink()
    with pytest.raises(UserError, match=f"model.safetensors.index.json: names shard\\(s\\) that are missing: {shards[-1].name}"):
        check_gpt2_dir(tmp_path)
