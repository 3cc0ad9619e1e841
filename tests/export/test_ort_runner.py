"""OrtRunner implements the evalsuite Runner protocol: same perplexity and latency harness as torch."""

import json

import onnx
import pytest
import torch

from evalsuite.backends import open_backend
from evalsuite.latency import measure_latency
from evalsuite.perplexity import perplexity
from evalsuite.runner import Runner, TorchRunner
from export import passes
from export.onnx import export_decoder, save_onnx
from export.ort_runner import OrtRunner


@pytest.fixture(scope="module")
def artifact(trained_tiny, tmp_path_factory):
    """A step-like dir: model.onnx with config.json beside it (what the plan runner hands us)."""
    from compress.models import load_model

    model_dir, held = trained_tiny
    model = load_model(model_dir)
    graph = export_decoder(model, opset=18)
    passes.gemm_to_matmul(graph)
    out = tmp_path_factory.mktemp("step")
    save_onnx(graph, out / "model.onnx")
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    return model, out, held


def test_open_backend_through_the_entry_point(artifact):
    _, out, _ = artifact
    runner = open_backend("onnxruntime", out, "cpu")  # a dir holding model.onnx, as the runner passes it
    assert isinstance(runner, Runner) and isinstance(runner, OrtRunner)
    config = json.loads((out / "config.json").read_text())
    assert (runner.backend, runner.device) == ("onnxruntime", "cpu")
    assert runner.vocab_size == config["vocab_size"] and runner.max_positions == config["n_positions"]


def test_threads_are_pinned_and_reported(artifact):
    _, out, _ = artifact
    assert OrtRunner(out / "model.onnx", threads=1).threads == 1
    assert OrtRunner(out / "model.onnx").threads == torch.get_num_threads()


def test_perplexity_through_the_same_harness_matches_torch(artifact):
    model, out, held = artifact
    ids = held[:600]
    ort_ppl = perplexity(OrtRunner(out / "model.onnx"), ids, seq_len=64, stride=32, progress=False)
    torch_ppl = perplexity(TorchRunner(model), ids, seq_len=64, stride=32, progress=False)
    assert ort_ppl.tokens_scored == torch_ppl.tokens_scored == 599
    assert ort_ppl.ppl == pytest.approx(torch_ppl.ppl, rel=1e-5)
    assert ort_ppl.ppl < 260  # a trained model beats the uniform guess over its 260-token vocab


def test_latency_harness_runs_on_the_ort_runner(artifact):
    _, out, _ = artifact
    r = measure_latency(OrtRunner(out / "model.onnx"), prompt=16, new_tokens=4, repeats=2, warmup=1, progress=False)
    assert r.prompt == 16 and r.new_tokens == 4 and r.tokens_per_s > 0 and r.decode_ms_per_token["p50"] > 0


def test_batches_of_windows_without_past(artifact):
    """perplexity() calls forward(ids) with (B, T) windows and no past: an empty cache of length 0."""
    model, out, held = artifact
    batch = held[:128].view(2, 64)
    logits, past = OrtRunner(out / "model.onnx").forward(batch)
    assert logits.shape == (2, 64, model.config.vocab_size) and logits.dtype == torch.float32
    assert past.length == 64 and past.arrays[0].shape == (2, 4, 64, 16)


def test_gathered_tables_are_the_embeddings(artifact, tmp_path):
    """The roofline leaves out tables a decode step only looks up. As traced, optimum's tied-weight
    deduplication (it runs where accelerate is installed) makes the head read Transpose(wte), so wte
    is also multiplied and only wpe is looked up only; once the transpose is folded, the Gather copy
    of wte is looked up only too; once the exporter shares the tied table, only wpe again, as in torch."""
    from export.tied_embedding import share_tied_embedding, tied_token_gather

    model, out, _ = artifact
    c = model.config
    only_wpe = c.n_positions * c.n_embd * 4
    assert OrtRunner(out / "model.onnx").gathered_weight_bytes == only_wpe == TorchRunner(model).gathered_weight_bytes
    graph = onnx.load(out / "model.onnx")
    assert passes.fold_transposes(graph) == 1  # the head's Transpose(wte): now a second copy of the table
    folded = OrtRunner(save_onnx(graph, tmp_path / "folded.onnx"))
    assert folded.gathered_weight_bytes == (c.vocab_size + c.n_positions) * c.n_embd * 4
    assert share_tied_embedding(graph, tied_token_gather(graph))
    shared = OrtRunner(save_onnx(graph, tmp_path / "model.onnx"))
    assert shared.gathered_weight_bytes == only_wpe
