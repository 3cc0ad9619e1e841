"""Engine build, KV-cache runner, device matching and audit with real TensorRT on a GPU.

NEVER RUN on the machines this was written on (TensorRT cannot be installed there): every test here
skips with the reason. On a device with TensorRT 10 and CUDA torch: pytest -m tensorrt tests/export.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("tensorrt", reason="TensorRT is not installed here (it only installs on NVIDIA machines)")
if not torch.cuda.is_available():
    pytest.skip("TensorRT needs a CUDA GPU visible to torch", allow_module_level=True)

from compress.errors import UserError  # noqa: E402
from compress.plan import LatencyConfig  # noqa: E402
from compress.step_inputs import EvalInput, StepInputs  # noqa: E402
from compress.step_api import StepContext  # noqa: E402
from export.generate import GenerationConfig, generate  # noqa: E402
from export.tensorrt import ENGINE_JSON, finish_step  # noqa: E402
from export.trt_runner import TrtRunner, audit_layers, open_runner  # noqa: E402
from tests.tiny_models import tiny_model  # noqa: E402

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny GPT-2 exported for TensorRT fp16 and built here by finish_step."""
    from export.onnx import save_onnx
    from export.step import build_graph
    from export.tensorrt import TensorRTExport

    model = tiny_model(seed=0)
    step = tmp_path_factory.mktemp("06-export-tensorrt")
    graph, _ = build_graph(TensorRTExport(format="tensorrt", precision="fp16"), model, {}, logging.getLogger("t"))
    save_onnx(graph, step / "model.onnx")
    model.config.to_json_file(step / "config.json")
    inputs = StepInputs(declared=frozenset({"eval", "latency"}), _latency=LatencyConfig(prompt=32, new_tokens=16),
                        _eval=EvalInput(SimpleNamespace(seq_len=64), digest=""))
    ctx = StepContext(inputs=inputs, name=step.name, out_dir=step, work_dir=step, input_dir=step, base_dir=step,
                      device=torch.device("cpu"), log=logging.getLogger("t"))
    out = finish_step(SimpleNamespace(precision="fp16", profile=None), step / "model.onnx", ctx)
    return step, model, out


def test_engine_is_built_and_stamped(built):
    step, _, out = built
    assert out.artifact == "model.engine" and (step / "model.engine").is_file()
    spec = json.loads((step / ENGINE_JSON).read_text())
    assert spec["built"]["tensorrt"] and spec["built"]["gpu"] == torch.cuda.get_device_name(0)
    assert (step / "timing.cache").is_file() and (step / "layers.json").is_file()


def test_runner_matches_torch_with_kv_cache(built):
    step, model, _ = built
    runner = open_runner(step / "model.engine", "cuda:0")
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    want = model(ids).logits
    logits, past = runner.forward(ids[:, :12])  # prefill (past 0), then decode one token at a time
    steps = [logits]
    for t in range(12, 20):
        logits, past = runner.forward(ids[:, t:t + 1], past)
        steps.append(logits)
    got = torch.cat(steps, dim=1).cpu()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)  # fp16 engine vs fp32 torch


def test_long_prompts_and_big_batches_are_split(built):
    step, model, _ = built
    runner = TrtRunner(step)
    ids = torch.randint(0, 256, (3, 100), generator=torch.Generator().manual_seed(1))  # batch > 1, prompt > 64
    logits, past = runner.forward(ids)
    assert logits.shape == (3, 100, 256) and past.length == 100
    torch.testing.assert_close(logits.cpu(), model(ids).logits, atol=2e-2, rtol=2e-2)


def test_greedy_generation_picks_torch_argmax(built):
    """Each generated token is torch's argmax up to fp16 noise (exact ties may flip between fp16/fp32)."""
    step, model, _ = built
    new = generate(TrtRunner(step), [1, 2, 3, 4], GenerationConfig(max_new_tokens=8, stop_at_eos=False))
    assert len(new) == 8
    got = torch.tensor([[1, 2, 3, 4, *new]])
    logits = model(got).logits[0, 3:-1]  # (8, V): the prediction of each generated token
    chosen = logits.gather(-1, got[0, 4:, None]).squeeze(-1)
    assert torch.all(logits.max(-1).values - chosen < 2e-2)


def test_engine_from_another_device_is_refused(built, tmp_path):
    import shutil

    step, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(step, copy)
    spec = json.loads((copy / ENGINE_JSON).read_text())
    spec["built"]["tensorrt"] = "8.5.2"
    (copy / ENGINE_JSON).write_text(json.dumps(spec))
    with pytest.raises(UserError, match="build_engine.sh"):
        TrtRunner(copy)


def test_audit_runs_on_the_built_engine(built):
    step, _, _ = built
    info = json.loads((step / "layers.json").read_text())
    assert info["Layers"] and audit_layers(info, "fp16") == []
