"""bench/peers.py and bench/peer_engines.py: our logic around the peers (the rows bench/run.py gets
when the peers' venv is absent or a peer wrote nothing, the tokenizer hand-off to the converters,
the fastest-peer column), and, where an engine is installed (in .venv-peers: run these tests with
its python), its adapter scoring its own logits against torch's."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from compress.models import save_model
from tests.tiny_models import tiny_model

BENCH = Path(__file__).resolve().parents[2] / "bench"
DATA = BENCH.parents[1] / "shared" / "data"


# bench/ is no package: load run.py as its test does; it loads peers.py, and peer_engines.py on demand
_spec = importlib.util.spec_from_file_location("bench_run_for_peers", BENCH / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
peers = bench_run.bench_peers


def _installed(module: str) -> bool:
    """Whether a peer's package is importable here, decided at collection, so an absent peer's test is
    skipped before its fixtures (a tokenizer trained, a model saved) cost anything."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


def test_without_the_venv_every_peer_row_says_how_to_install(tmp_path):
    rows = peers.peer_rows("suite", tmp_path, tmp_path, None, rounds=1, new_tokens=4, threads=1,
                           work=tmp_path / "w", python=tmp_path / "no-venv" / "python")
    assert [r["row"] for r in rows] == list(peers.PEERS)
    assert all(r["suite"] == "suite" and peers.NOT_INSTALLED in r["error"] and "decode_ms" not in r for r in rows)


def test_rows_from_file_labels_rows_and_names_the_missing_ones(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"row": "peer: a", "bytes": 10, "decode_ms": 2.0, "prefill_ms": 5.0}]))
    rows = peers.rows_from_file(path, "s", ["peer: a", "peer: b"])
    assert rows[0] == {"suite": "s", "row": "peer: a", "bytes": 10, "decode_ms": 2.0, "prefill_ms": 5.0}
    assert rows[1]["row"] == "peer: b" and "no row" in rows[1]["error"]


def test_table_has_decode_x_fastest_peer_and_the_reason_for_unmeasured_rows():
    common = {"suite": "s", "bytes": 1e6, "roofline_tok_s": 1000.0, "prefill_ms": 10.0}
    rows = [{**common, "row": "torch fp32 eager", "decode_ms": 8.0, "ppl": 10.0},
            {**common, "row": "ours: int4", "decode_ms": 1.0, "ppl": 10.5},
            {**common, "row": "peer: fast", "decode_ms": 2.0, "ppl": 11.0},
            {**common, "row": "peer: slow", "decode_ms": 4.0},
            {"suite": "s", "row": "peer: absent", "error": "not installed | run setup"}]
    lines = {line.split(" | ")[1]: line.split(" | ") for line in bench_run.table(rows).splitlines()
             if line.startswith("| s |")}
    # the columns: model, row, MB, ppl, ppl / teacher, prefill x, decode x torch, decode x best torch,
    # decode x fastest peer
    assert lines["ours: int4"][8] == "2.00" and lines["peer: slow"][8] == "0.50" and lines["peer: fast"][8] == "1.00"
    assert lines["ours: int4"][7] == "8.00"
    assert lines["ours: int4"][4] == "1.050" and lines["torch fp32 eager"][6] == "1.00"
    (absent,) = [k for k in lines if k.startswith("peer: absent")]
    assert "not installed / run setup" in absent and set(lines[absent][2:-1]) == {"–"}


def test_converters_get_a_model_directory_with_its_tokenizer(tmp_path):
    engines = peers.pe
    bare = save_model(tiny_model(), tmp_path / "bare")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):  # copied as they are, never parsed
        (tok_dir / name).write_text(f"{name} of the tokenizer")
    joined = engines.hf_dir_with_tokenizer(bare, tok_dir, tmp_path / "joined")
    assert joined != bare and (joined / "config.json").resolve() == (bare / "config.json").resolve()
    assert (joined / "tokenizer.json").read_text() == "tokenizer.json of the tokenizer"
    assert not (joined / "tokenizer_config.json").exists()
    assert engines.hf_dir_with_tokenizer(joined, tok_dir, tmp_path / "again") == joined  # has one already


@pytest.fixture
def tiny_dir(tmp_path, byte_tokenizer):
    model = tiny_model(vocab_size=len(byte_tokenizer), n_embd=128, n_head=4, n_positions=256)
    return model, save_model(model, tmp_path / "tiny", byte_tokenizer)


def _close_to_torch(runner, model, tol: float):
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    logits, _ = runner.forward(ids)
    with torch.no_grad():
        ref = model(ids).logits
    assert logits.shape == ref.shape and (logits - ref).abs().max() < tol


@pytest.mark.skipif(not _installed("ctranslate2"), reason="CTranslate2 is installed by bench/setup_peers.sh only")
def test_ctranslate2_adapter_scores_its_own_logits(tmp_path, tiny_dir):
    engines = peers.pe
    model, model_dir = tiny_dir
    runner = engines.CTranslate2Runner(engines.ct2_convert(model_dir, "int8", tmp_path), "int8", 1, 256)
    _close_to_torch(runner, model, tol=0.5)
    prefill_ms, decode_ms = engines.ct2_latency(runner, list(range(16)), 4)
    assert math.isfinite(prefill_ms) and math.isfinite(decode_ms)


@pytest.mark.skipif(not _installed("optimum.intel"), reason="optimum-intel is installed by bench/setup_peers.sh only")
def test_openvino_adapter_cache_matches_full_forward(tmp_path, tiny_dir):
    engines = peers.pe
    model, model_dir = tiny_dir
    runner = engines.OpenVinoRunner(engines.openvino_convert(model_dir, 8, tmp_path), 1, 256)
    _close_to_torch(runner, model, tol=0.5)
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    full, _ = runner.forward(ids)
    _, past = runner.forward(ids[:, :16])
    steps = []
    for i in range(16, 24):
        logits, past = runner.forward(ids[:, i:i + 1], past)
        steps.append(logits[:, -1])
    assert (torch.stack(steps, 1) - full[:, 16:]).abs().max() < 0.1


@pytest.mark.slow
def test_llama_cpp_adapter_scores_its_own_logits(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by bench/setup_peers.sh only")
    if not (DATA / "gpt2-tokenizer").exists():
        pytest.skip("the GPT-2 tokenizer (../shared/data) is needed: llama.cpp's converter knows its hash")
    from transformers import AutoTokenizer

    engines = peers.pe
    model = tiny_model(vocab_size=50257, n_embd=128, n_head=4, n_positions=256)
    model_dir = save_model(model, tmp_path / "tiny", AutoTokenizer.from_pretrained(DATA / "gpt2-tokenizer"))
    f32 = engines.gguf_f32(model_dir, tmp_path / "gguf")
    _close_to_torch(engines.LlamaCppRunner(f32, 1, n_ctx=256, all_logits=True), model, tol=1e-2)
    q8 = engines.LlamaCppRunner(engines.gguf_quantized(f32, "Q8_0", 1), 1, n_ctx=64, all_logits=False)
    logits, past = q8.forward(torch.arange(8)[None])
    step, past = q8.forward(logits[:, -1].argmax(-1, keepdim=True), past)
    assert logits.shape == (1, 1, 50257) and step.shape == (1, 1, 50257) and past == 9


FAKE_PEERS = """#!{python}
# stands in for the venv's python running bench/peers.py: one row per --only name
import json, sys
argv = sys.argv[2:]
out = argv[argv.index("--out") + 1]
names = argv[argv.index("--only") + 1:]
names = names[:next((i for i, a in enumerate(names) if a.startswith("--")), len(names))]
rows = [{{"row": n, "bytes": 2_000_000, "prefill_ms": 3.0, "decode_ms": 1.5}} for n in names[1:]]
json.dump(rows, open(out, "w"))
"""


def test_run_py_reads_the_peers_rows_back_with_a_roofline(tmp_path):
    import argparse
    import sys

    fake = tmp_path / "python"
    fake.write_text(FAKE_PEERS.format(python=sys.executable))
    fake.chmod(0o755)
    model_dir = save_model(tiny_model(), tmp_path / "m")
    args = argparse.Namespace(skip_peers=False, teacher=model_dir, rounds=1, new_tokens=4, peers_python=fake)
    rows = bench_run.peers("s", model_dir, model_dir, torch.arange(10), tmp_path / "work", args)
    first, *measured = rows
    assert [r["row"] for r in rows] == list(peers.PEERS)
    assert "no row" in first["error"] and "roofline_tok_s" not in first  # the fake wrote none for it
    assert all(r["suite"] == "s" and r["decode_ms"] == 1.5 and r["roofline_tok_s"] > 0 for r in measured)
    assert (tmp_path / "work" / "eval_ids.npy").exists()
