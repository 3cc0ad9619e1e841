"""On the reference teacher (slow; skipped without ../shared/data): the calibrated criteria beat magnitude
at 2:4, and whitened low-rank beats plain SVD at the same parameter count (bench/families.py measures the
full table)."""

from __future__ import annotations

import copy

import pytest

from compress.lowrank.api import factorize
from compress.lowrank.config import FactorizeConfig
from compress.models import load_model, load_tokenizer
from compress.sparsity.api import sparsify
from compress.sparsity.config import SparsifyConfig
from evalsuite.data import read_text, tokenize
from evalsuite.perplexity import perplexity
from evalsuite.runner import TorchRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    from tests.conftest import SHARED_DATA

    teacher_dir = SHARED_DATA / "teachers" / "gpt2-6x384-corpus"
    if not (teacher_dir / "config.json").exists():
        pytest.skip(f"reference teacher not found at {teacher_dir}")
    tok = load_tokenizer(teacher_dir)
    eval_ids = tokenize(read_text(SHARED_DATA / "corpus" / "heldout", max_chars=40_000), tok)
    calib_ids = tokenize(read_text(SHARED_DATA / "corpus" / "train", max_chars=300_000), tok)
    return load_model(teacher_dir), eval_ids, calib_ids


def ppl(model, ids) -> float:
    return perplexity(TorchRunner(model), ids, seq_len=256, max_tokens=4096, batch_size=8, progress=False).ppl


CALIB = dict(calib_tokens=16 * 256, seq_len=256)


def test_sparsegpt_and_wanda_2_4_beat_magnitude_on_the_teacher(setup):
    teacher, eval_ids, calib_ids = setup
    got = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = copy.deepcopy(teacher)
        sparsify(model, SparsifyConfig(method=method, pattern="2:4", **CALIB), calib_ids)
        got[method] = ppl(model, eval_ids)
    assert got["sparsegpt"] < got["wanda"] < got["magnitude"], got


def test_whitened_low_rank_beats_svd_on_the_teacher(setup):
    teacher, eval_ids, calib_ids = setup
    got = {}
    for method in ("svd", "whiten"):
        model = copy.deepcopy(teacher)
        factorize(model, FactorizeConfig(method=method, params=0.5, **CALIB), calib_ids)
        got[method] = ppl(model, eval_ids)
    assert got["whiten"] < got["svd"], got
