"""The prune step inside a real (tiny) plan run."""

import json

import torch
from safetensors.torch import load_file

from compress.plan import parse_plan
from compress.pipeline import run_plan


def test_prune_steps_in_a_tiny_plan(tmp_path):
    plan = parse_plan({
        "name": "prune",
        "model": {"pretrain": {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, "seq_len": 32,
                               "batch_size": 4, "tokenizer": {"vocab_size": 300}, "tokens": 2000}},
        "data": {"train": {"builtin": "python-docs", "max_chars": 60000},
                 "eval": {"builtin": "python-docs", "split": "heldout", "seq_len": 32, "max_tokens": 1000}},
        "eval": {"latency": {"prompt": 8, "new_tokens": 4, "repeats": 1, "warmup": 0}, "targets": ["host"]},
        "steps": [{"prune": {}},
                  {"prune": {"importance": "activation", "layers": 1, "width": 0.5, "mlp": 0.5, "calib_tokens": 512}}],
    })
    result = run_plan(plan, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert [r.status for r in result.records] == ["ran", "ran", "ran"]

    # ratio 0 everywhere: the same weights
    base = load_file(run / "00-base" / "model" / "model.safetensors")
    same = load_file(run / "01-prune" / "model" / "model.safetensors")
    assert base.keys() == same.keys() and all(torch.equal(base[k], same[k]) for k in base)

    config = json.loads((run / "02-prune" / "model" / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_inner"]) == (1, 2, 16, 64)
    step = json.loads((run / "02-prune" / "step.json").read_text())
    assert step["summary"].startswith("pruned 2x32 -> 1x16, n_head 4 -> 2, n_inner 128 -> 64, params ")
    assert step["summary"].endswith("activation)") and len(step["info"]["dropped_layers"]) == 1
    metrics = [json.loads((run / n / "metrics.json").read_text()) for n in ("00-base", "02-prune")]
    assert metrics[1]["params"] == step["info"]["params_after"] < metrics[0]["params"]
    assert metrics[1]["ppl"] > 1 and metrics[1]["ppl_ratio_to_base"] > 0
    assert (run / "02-prune" / "model" / "tokenizer_config.json").exists()
