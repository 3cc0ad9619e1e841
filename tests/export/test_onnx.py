"""The fp32 ONNX export matches torch: prefill, decode with the KV cache, and a left-padded batch of 2."""


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.errors import UserError
from export import passes
from export.onnx import describe_io, export_decoder, kv_layout, save_onnx
from export.ort_runner import OrtRunner

ATOL = 1e-4  # fp32 graph vs fp32 torch; observed ~3e-7 on the tiny model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.tiny_models import tiny_model

    model = tiny_model(seed=1)
    graph = export_decoder(model, opset=18)
    passes.gemm_to_matmul(graph)
    passes.fold_transposes(graph)
    path = save_onnx(graph, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


def test_io_declares_one_kv_cache_graph(exported, tmp_path):
    _, path = exported
    graph = onnx.load(path)
    io = describe_io(graph)
    names = [i["name"] for i in io["inputs"]]
    assert names[:1] == ["input_ids"] and {"attention_mask", "position_ids"} <= set(names)
    assert kv_layout(graph) == {"n_layer": 2, "n_head": 4, "head_dim": 16}
    past = next(i for i in io["inputs"] if i["name"] == "past_key_values.0.key")
    assert past["dtype"] == "float32" and past["dims"][1:] == [4, "past_sequence_length", 16]
    assert [o["name"] for o in io["outputs"]][:2] == ["logits", "present.0.key"]


def test_prefill_and_decode_match_torch(exported):
    model, path = exported
    runner = OrtRunner(path, vocab_size=256, max_positions=128)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    logits, past = runner.forward(ids[:, :8])
    with torch.no_grad():
        ref = model(ids[:, :8], use_cache=True)
    assert past.length == 8
    torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    ref_past = ref.past_key_values
    for t in range(8, 12):  # decode one token at a time with the cache
        logits, past = runner.forward(ids[:, t:t + 1], past)
        with torch.no_grad():
            ref = model(ids[:, t:t + 1], past_key_values=ref_past, use_cache=True)
        ref_past = ref.past_key_values
        torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    with torch.no_grad():
        full = model(ids).logits[:, -1]
    torch.testing.assert_close(logits[:, -1], full, atol=ATOL, rtol=0)


def test_left_padded_batch_of_two_matches_torch(exported):
    model, path = exported
    runner = OrtRunner(path, vocab_size=256, max_positions=128)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # row 1: a 5-token prompt, left-padded
    logits, past = runner.forward(ids, attention_mask=mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
    torch.testing.assert_close(logits[0], ref.logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1, 4:], ref.logits[1, 4:], atol=ATOL, rtol=0)
    # The padded row equals the same prompt run alone, unpadded.
    alone, _ = runner.forward(ids[1:, 4:])
    torch.testing.assert_close(logits[1, 4:], alone[0], atol=ATOL, rtol=0)

    nxt = torch.tensor([[5], [7]])
    step, _ = runner.forward(nxt, past)  # decode keeps the padding mask of the cache
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        ref2 = model(nxt, past_key_values=ref.past_key_values, attention_mask=mask2,
                     position_ids=positions[:, -1:] + 1, use_cache=True)
    torch.testing.assert_close(step, ref2.logits, atol=ATOL, rtol=0)


def test_graph_runs_in_plain_onnxruntime_with_empty_past(exported):
    """io.json's recipe works without our runner: a prefill is a call with past length 0."""
    _, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([[1, 2, 3]], np.int64), "attention_mask": np.ones((1, 3), np.int64),
            "position_ids": np.array([[0, 1, 2]], np.int64)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((1, 4, 0, 16), np.float32)
    logits, present = sess.run(["logits", "present.1.value"], feed)
    assert logits.shape == (1, 3, 256) and present.shape == (1, 4, 3, 16)


def test_corrupt_or_missing_onnx_is_a_clear_error(tmp_path, exported):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(exported[1].read_bytes()[:2000])  # truncated
    with pytest.raises(UserError, match="ONNX Runtime cannot load this model"):
        OrtRunner(bad)
    with pytest.raises(UserError, match="no such ONNX file"):
        OrtRunner(tmp_path / "absent.onnx")


def test_graph_without_kv_cache_is_refused(tmp_path):
    """A no-cache export (optimum task text-generation) cannot serve decode: say so, in one line."""
    from optimum.exporters.onnx import onnx_export_from_model

    from tests.tiny_models import tiny_model

    onnx_export_from_model(tiny_model(), tmp_path, task="text-generation", do_validation=False)
    with pytest.raises(UserError, match="not a KV-cache decoder") as e:
        OrtRunner(tmp_path / "model.onnx")
    assert "\n" not in str(e.value)
    assert kv_layout(onnx.load(tmp_path / "model.onnx")) is None
    assert describe_io(onnx.load(tmp_path / "model.onnx"))["kv_cache"] is None


def test_optimum_ties_the_head_to_the_token_table_without_a_word(capfd):
    """accelerate (a dev dependency) lets optimum's tied-weight deduplication run: no "requires
    accelerate" line, none of its expected "likely duplicate" notes, and (the check ran) the traced
    head reads the token table itself through a Transpose instead of a second copy of it."""
    import logging

    from tests.tiny_models import tiny_model

    model = tiny_model(seed=5)
    assert logging.getLogger("optimum").isEnabledFor(logging.WARNING)  # its warnings would show
    graph = export_decoder(model, opset=18)
    err = capfd.readouterr().err
    assert "requires accelerate" not in err and "likely duplicate" not in err
    producers = {o: n for n in graph.graph.node for o in n.output}
    head = producers["logits"]
    table = producers[head.input[1]]
    assert (head.op_type, table.op_type, list(table.input)) == ("MatMul", "Transpose", ["transformer.wte.weight"])
    wte_t = model.transformer.wte.weight.detach().numpy().T  # (E, V)
    copies = [t.name for t in graph.graph.initializer
              if list(t.dims) == list(wte_t.shape) and np.array_equal(onnx.numpy_helper.to_array(t), wte_t)]
    assert copies == []  # no second, transposed copy of the table
