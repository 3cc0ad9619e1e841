"""Every plan the project shows (examples/*.yaml, the README's plan block) validates offline, on a model
of the shape it names, and the README's library snippet runs as written on a tiny model.

Plan validation loads no model and downloads nothing: hub ids of the GPT-2 family are checked with the
configs the package carries; a local model dir is read for its config.json.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from compress.errors import PlanError
from compress.models import save_model
from compress.plan import load_plan
from compress.pipeline import dry_run
from tests.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after a README heading."""
    section = README[README.index(heading):]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under {heading}"
    return match.group(1)


def fake_model_dir(path: Path, config: dict) -> Path:
    """A directory plan validation takes for a GPT-2 of this shape: config.json, a safetensors file whose
    header declares every tensor of that shape (1-byte zeros: validation reads headers only, and a model
    dir must hold the bytes it declares) and a one-token tokenizer."""
    import math
    import struct

    from compress.model_files import expected_gpt2_shapes

    path.mkdir(parents=True)
    config = {"model_type": "gpt2", **config}
    (path / "config.json").write_text(json.dumps(config))
    header, offset = {}, 0
    for name, shape in expected_gpt2_shapes(config).items():
        size = math.prod(shape)
        header[f"transformer.{name}"] = {"dtype": "U8", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    with open(path / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        fh.write(bytes(offset))
    (path / "vocab.json").write_text(json.dumps({"a": 0}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


@pytest.fixture
def readme_plan(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("Some training text. " * 200)
    (tmp_path / "wiki.test.raw").write_text(" = Heading = \n Some held-out text . " * 200)
    path = tmp_path / "plan.yaml"
    path.write_text(readme_block("## The plan", "yaml"))
    return path


pytestmark = pytest.mark.usefixtures("no_model_loads")  # plan validation loads no model (conftest)


def test_the_readme_plan_validates_on_gpt2_and_its_shapes_are_shown(readme_plan, tmp_path):
    plan = load_plan(readme_plan)
    lines = dry_run(plan, tmp_path / "run")
    assert [line.split()[0] for line in lines] == ["00-base", "01-prune", "02-distill", "03-quantize-gptq-w4g64",
                                                   "04-export-onnx", "05-export-tensorrt"]
    assert "[-> 12x768]" in lines[0] and "[-> 12x576]" in lines[1]  # gpt2; width 0.25 leaves 9 of 12 heads
    assert "[-> 12x576, int4]" in lines[3]


def test_the_readme_plan_with_group_128_fails_at_plan_time_naming_the_prune(readme_plan):
    with pytest.raises(PlanError) as e:
        load_plan(readme_plan, ["steps.2.quantize.group_size=128"])
    (problem,) = e.value.problems
    assert problem.startswith("steps[2].quantize.group_size: 128 does not divide n_embd 576")
    assert "made by steps[0].prune (mlp 0.5, width 0.25)" in problem and "group_size 64 or 32" in problem
    assert problem.endswith("(--set steps.2.quantize.group_size=128)")  # the --set, not a line of the file


@pytest.mark.parametrize("model, pruned", [
    ("gpt2", "12x576"), ("openai-community/gpt2", "12x576"), ("distilgpt2", "6x576"), ("gpt2-medium", "24x768"),
    ("gpt2-large", "36x960"), ("gpt2-xl", "48x1216")])
def test_the_readme_plan_on_each_gpt2_of_the_hub(readme_plan, tmp_path, model, pruned):
    # heads of 64 everywhere: width 0.25 leaves 9, 12, 15, 19 of 12, 16, 20, 25 heads
    lines = dry_run(load_plan(readme_plan, [f"model={model}"]), tmp_path / "run")
    assert f"[-> {pruned}]" in lines[1]


def test_an_unknown_hub_id_waits_for_its_model_with_a_note(readme_plan, tmp_path):
    plan = load_plan(readme_plan, ["model=someone/gpt2-finetune"])
    lines = dry_run(plan, tmp_path / "run")
    assert "shape known when it runs" in lines[1]
    assert lines[-1].startswith("note: model: model 'someone/gpt2-finetune' is not a GPT-2 whose config")


def test_examples_quickstart_and_gpt2(tmp_path):
    for name, shapes in [("quickstart.yaml", ["4x256", "4x192", "4x192", "4x192"]),
                         ("gpt2.yaml", ["12x768", "12x576", "12x576", "12x576"])]:
        plan = load_plan(ROOT / "examples" / name)
        lines = dry_run(plan, tmp_path / name)
        assert [re.search(r"\[-> (\S+?)[],]", line).group(1) for line in lines[:4]] == shapes, lines


def test_example_smoke_validates(tmp_path):
    plan = load_plan(ROOT / "examples" / "smoke.yaml")
    lines = dry_run(plan, tmp_path / "run")
    assert [line.split()[0] for line in lines] == ["00-base", "01-prune", "02-quantize-rtn-w8"]
    assert "[-> 2x64, int8]" in lines[2]


def test_example_gpt2_local_on_a_model_of_its_shape(tmp_path):
    """The shared teacher when ../shared/data is here; otherwise a model dir of the same shape
    (6 x 384, 6 heads, GPT-2 vocabulary: the example's comment) and stand-in text files."""
    example = ROOT / "examples" / "gpt2-local.yaml"
    teacher = (example.parent / "../../shared/data/teachers/gpt2-6x384-corpus").resolve()
    overrides = []
    if not (teacher / "config.json").is_file():
        fake = fake_model_dir(tmp_path / "teacher", {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 50257,
                                                     "n_positions": 1024})
        (tmp_path / "train.txt").write_text("text " * 2000)
        (tmp_path / "heldout.txt").write_text("other text " * 2000)
        overrides = [f"model={fake}", f"data.train.path={tmp_path / 'train.txt'}",
                     f"data.eval.path={tmp_path / 'heldout.txt'}"]
    lines = dry_run(load_plan(example, overrides), tmp_path / "run")
    assert "[-> 6x384]" in lines[0] and "[-> 6x256]" in lines[1]  # width 0.33 removes 2 of 6 heads
    assert "[-> 6x256, int4]" in lines[3]


def test_the_readme_library_snippet_runs_on_a_tiny_model(tmp_path, monkeypatch):
    """The README's calls as written; only the model path, the output dir and the calibration and
    distillation budgets are substituted (a 2-block, 4-head GPT-2 whose pruned widths take groups of
    64, like gpt2's). The small budgets keep it at a few seconds: what it proves is that the calls,
    their argument names and the shapes they leave are as the README says, not the quality."""
    monkeypatch.undo()  # this test loads models on purpose
    code = readme_block("## Library API", "python")
    model_dir = save_model(tiny_model(vocab_size=256, n_layer=2, n_embd=256, n_head=4, n_positions=256),
                           tmp_path / "gpt2")
    out = tmp_path / "out"
    for old, new in [('"path/to/gpt2"', repr(str(model_dir))), ('"out/"', repr(str(out))),
                     ("tokens=2_000_000", "tokens=4096, batch_tokens=2048, eval_tokens=2048"),
                     ("width=0.25)", "width=0.25, calib_tokens=2048)"), ("group_size=64)", "group_size=64, calib_samples=8)")]:
        assert old in code, old
        code = code.replace(old, new)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (40_000,), generator=g)
    scope = {"calib_ids": ids[:8192], "train_ids": ids[:36_000], "eval_ids": ids[36_000:]}
    printed = []
    scope["print"] = printed.append
    exec(compile(code, "README.md (Library API)", "exec"), scope)
    assert scope["q"].config.n_embd == 192 and scope["q"].config.n_inner == 512  # 3 of 4 heads, half the MLP
    assert (out / "config.json").is_file() and "quantization_config" in json.loads((out / "config.json").read_text())
    (ppl,) = printed
    assert 1 < ppl < 1000  # random tokens over a 256-token vocabulary: about uniform, not broken
