"""genai_config.json: onnxruntime-genai generates from an export dir the tokens the toolkit's ORT runner does."""

import json

import pytest

from compress.models import load_model, load_tokenizer
from export.genai import GENAI_FILE, genai_config, write_genai_config
from export.onnx import describe_io, export_decoder, save_onnx


@pytest.fixture(scope="module")
def export_dir(trained_tiny, tmp_path_factory):
    """model.onnx (fp32, KV cache) of the trained tiny model, config.json, tokenizer and genai_config.json."""
    from compress.quantization.storage import write_gpt2_config

    model_dir, _ = trained_tiny
    out = tmp_path_factory.mktemp("genai")
    graph = export_decoder(load_model(model_dir), opset=18)
    save_onnx(graph, out / "model.onnx")
    write_gpt2_config(model_dir, out)
    tok = load_tokenizer(model_dir)
    tok.save_pretrained(out)
    write_genai_config(out, describe_io(graph), tok)
    return out, tok


def test_config_names_the_graphs_inputs_and_outputs(export_dir):
    out, tok = export_dir
    cfg = json.loads((out / GENAI_FILE).read_text())
    d = cfg["model"]["decoder"]
    assert cfg["model"]["type"] == "decoder" and d["filename"] == "model.onnx"
    assert d["inputs"] == {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    assert d["outputs"] == {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}
    assert (d["num_hidden_layers"], d["num_attention_heads"], d["head_size"], d["hidden_size"]) == (2, 4, 16, 64)
    assert cfg["model"]["context_length"] == 128 and cfg["model"]["vocab_size"] == len(tok)
    assert cfg["model"]["eos_token_id"] == tok.eos_token_id
    assert cfg["search"]["past_present_share_buffer"] is False
    with pytest.raises(ValueError, match="no KV cache"):
        genai_config({"kv_cache": None, "inputs": []}, {"n_positions": 8}, 0, 0)


def test_onnxruntime_genai_generates_the_ort_runners_greedy_tokens(export_dir):
    og = pytest.importorskip("onnxruntime_genai",
                             reason="onnxruntime-genai is not installed (pip install -e '.[genai]')")
    from export.generate import GenerationConfig, generate
    from export.ort_runner import OrtRunner

    out, tok = export_dir
    prompt = tok.encode("The os module provides")
    new = 24
    cfg = GenerationConfig(max_new_tokens=new, eos_token_id=tok.eos_token_id)
    ours = generate(OrtRunner(out / "model.onnx", "cpu"), prompt, cfg)

    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    theirs = list(gen.get_sequence(0))[len(prompt):]
    assert theirs == list(ours) and len(theirs) > 4
    # genai's own tokenizer (onnxruntime-extensions, from tokenizer.json) decodes as transformers does
    assert og.Tokenizer(model).decode(theirs) == tok.decode(theirs)
