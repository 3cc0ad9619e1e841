"""Where a user waits for an answer, nothing heavy loads: every documented `python -m` command's
`--help` (and its subcommands'), and a plan with a schema error, answer without importing torch or
transformers (each costs seconds of CPU before the first line). Asserted on sys.modules of a fresh
interpreter, not on a timing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
# Every `python -m` command of the toolkit, with the subcommands that have their own --help.
COMMANDS = {
    "compress.run": [[]],
    "evalsuite": [[], ["compare"]],
    "export.generate": [[]],
    "export.tensorrt": [[], ["check"], ["build"], ["run"], ["stamp"], ["audit"]],
}
# The probe: run commands one after another as `python -m` does (one interpreter: the first command
# that loads a heavy module is the one named), reporting each one's exit code and heavy modules.
PROBE = """
import contextlib, io, json, runpy, sys
results = []
for module, *argv in json.loads(sys.argv[1]):
    sys.argv = [module, *argv]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    results.append({"code": code, "stdout": out.getvalue(),
                    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)})
print(json.dumps(results), file=sys.__stderr__)
""" % (HEAVY,)


def probe(*commands: list[str], env: dict[str, str] | None = None) -> tuple[list[dict], str]:
    """Each command's {code, stdout, heavy} in one fresh interpreter, and its stderr."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), **(env or {})})
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stderr


def test_every_documented_command_is_probed():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documented = {m for p in docs for m in re.findall(r"python -m ([a-z_][\w.]*)", p.read_text(encoding="utf-8"))}
    assert documented - {"pytest", "pip"} <= set(COMMANDS)


def test_help_imports_no_torch():
    commands = [[module, *sub, "--help"] for module, subs in COMMANDS.items() for sub in subs]
    results, _ = probe(*commands)
    for command, result in zip(commands, results):
        assert result["code"] == 0 and result["stdout"].startswith("usage:"), (command, result)
        assert result["heavy"] == [], f"python -m {' '.join(command)} imported {result['heavy']}"


def test_a_plan_schema_error_answers_without_torch(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: t\nmodel: {pretrain: {n_layer: 2, n_embd: 64, n_head: 2}}\n"
                    "data:\n  train: {builtin: python-docs}\n  eval: {builtin: python-docs, split: heldout}\n"
                    "steps:\n  - prune: {mlpp: 0.5}\n  - distil: {tokens: 1000}\n  - finetune: {tokens: 0}\n"
                    "  - qat: {tokenz: 1}\n  - export: {format: onnx, precisionn: int8}\n"
                    "  - sparsify: {sparsity: 0.5, methd: wanda}\n  - factorize: {method: svd, rankk: 4}\n"
                    "  - quantize: {method: gptq, bitz: 4}\n")
    [result], stderr = probe(["compress.run", str(plan), "--dry-run"])
    assert result["code"] == 2, stderr
    assert "steps[0].prune.mlpp: unknown key; did you mean 'mlp'?" in stderr
    assert "steps[1].distil: unknown step; did you mean 'distill'?" in stderr
    assert "steps[4].export.precisionn: unknown key" in stderr
    assert "steps[5].sparsify.methd: unknown key; did you mean 'method'?" in stderr
    assert "steps[6].factorize.rankk: unknown key; did you mean 'rank'?" in stderr
    assert "steps[7].quantize.bitz: unknown key; did you mean 'bits'?" in stderr
    assert result["heavy"] == [], f"a plan error imported {result['heavy']}"


def test_dry_run_with_a_cached_cost_model_imports_no_torch(tmp_path):
    from compress import cost
    from compress.model_shape import Shape
    from compress.step_api import Work

    plan = tmp_path / "plan.yaml"
    plan.write_text("name: t\nmodel: {pretrain: {n_layer: 2, n_embd: 64, n_head: 2, tokens: 5000, batch_size: 4, "
                    "seq_len: 32, tokenizer: {vocab_size: 300}}}\n"
                    "data:\n  train: {builtin: python-docs}\n  eval: {builtin: python-docs, split: heldout}\n"
                    "steps:\n  - prune: {mlp: 0.5}\n  - distill: {tokens: 2000, seq_len: 32, batch_size: 2}\n")
    shape = cost.calibration_shape(Shape(n_layer=2, n_head=2, head_dim=32, n_inner=256, vocab_size=300,
                                         n_positions=1024))
    key = cost.rates_key(shape, 1, *cost.calibration_batch(Work(train_tokens=1, batch=4, seq_len=32)))
    (tmp_path / "gpt2-edge").mkdir()
    (tmp_path / "gpt2-edge" / "costs.json").write_text(json.dumps({key: {"train_flops": 1e9, "forward_flops": 3e9}}))
    [result], stderr = probe(["compress.run", str(plan), "--dry-run", "--threads", "1", "--out", str(tmp_path / "run")],
                             env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result["code"] == 0 and "estimate: " in result["stdout"], stderr
    assert result["heavy"] == [], f"--dry-run imported {result['heavy']}"
