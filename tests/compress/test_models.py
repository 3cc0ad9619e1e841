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
