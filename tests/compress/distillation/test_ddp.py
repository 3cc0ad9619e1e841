"""Two gloo processes on CPU under torchrun: DDP keeps the ranks' weights identical and the loss falls."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

# Each rank: a different random student (DDP must broadcast rank 0's), its own data shard.
WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from compress import DistillConfig, distill, distributed
    from tests.tiny_models import tiny_model

    out = Path(sys.argv[1])
    distributed.init_from_env(torch.device("cpu"))
    rank = distributed.rank()
    teacher = tiny_model(seed=0, vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    with torch.no_grad():
        teacher.transformer.ln_f.weight.mul_(10)  # sharp logits: something to learn
    student = tiny_model(seed=10 + rank, vocab_size=64, n_layer=1, n_embd=16, n_head=2, n_positions=64)
    ids = torch.randint(0, 64, (6000,), generator=torch.Generator().manual_seed(0))
    ids[1::2] = (ids[::2] + 1) % 64
    cfg = DistillConfig(tokens=32 * 8 * 12, seq_len=32, batch_tokens=32 * 8, lr=1e-2, warmup_steps=2,
                        eval_tokens=1000, eval_every=6, checkpoint_every=6,
                        loss={"kl": 1.0, "ce": 0.2, "hidden": 0.2})
    losses = []
    student = distill(student, teacher, ids, cfg, progress=False, checkpoint_dir=out / "ckpt",
                      on_step=lambda step, terms: losses.append(terms["kl"]))
    save_file({k: v.contiguous() for k, v in student.state_dict().items() if "lm_head" not in k},
              str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": distributed.world_size(), "kl": losses}))
    distributed.shutdown()
""")


def torchrun(args, tmp_path, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_gloo_ranks_stay_identical_and_the_loss_falls(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    proc = torchrun(["worker.py", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["world"] == 2 and logs[0]["kl"] == logs[1]["kl"]  # terms are averaged over ranks
    kl = logs[0]["kl"]
    assert len(kl) == 12 and sum(kl[-3:]) < 0.85 * sum(kl[:3])
    assert (tmp_path / "ckpt" / "state.json").exists()  # written by rank 0 alone


@pytest.mark.slow
def test_plan_under_torchrun(tmp_path, trained_tiny):
    from evalsuite.data import builtin_text

    (tmp_path / "train.txt").write_text(builtin_text("python-docs", "train")[:40_000])
    (tmp_path / "eval.txt").write_text(builtin_text("python-docs", "heldout")[:3_000])
    (tmp_path / "plan.yaml").write_text(textwrap.dedent(f"""\
        name: ddp
        model: {trained_tiny[0]}
        data: {{train: {{path: train.txt}}, eval: {{path: eval.txt, seq_len: 64}}}}
        eval: {{latency: null, targets: []}}
        steps:
          - distill: {{student: {{layers: [1]}}, tokens: 4096, seq_len: 64, batch_tokens: 1024, lr: 3.0e-3,
                       warmup_steps: 1, eval_tokens: 512, eval_every: 2, loss: {{kl: 1.0, hidden: 0.1}}}}
        """))
    proc = torchrun(["-m", "compress.run", "plan.yaml", "--out", "run", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    info = json.loads((run / "01-distill" / "step.json").read_text())["info"]
    assert info["world_size"] == 2 and info["tokens_per_step"] == 1024 and info["steps"] == 4
    assert (run / "01-distill" / "DONE").exists() and (run / "report.md").exists()
    assert not list(run.glob(".*.tmp"))  # no scratch dirs of the second rank left behind
    assert proc.stdout.count("Report:") == 1  # one writer
    # a rerun under torchrun finds every step done
    again = torchrun(["-m", "compress.run", "plan.yaml", "--out", "run", "-q"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["steps"][1]["status"] == "cached"
