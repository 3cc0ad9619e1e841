"""ONNX Runtime dynamic int8 of the fp32 export on the hard teacher: plain vs smoothed first.

    PYTHONPATH=. python bench/outliers_ort.py     # 20k held-out tokens, 64 x 256 calibration tokens

The hard teacher is bench/quantize.py's (outliers x40 in channels 17, 138, 245, 371 of every block).
Each row goes through what a plan runs for `- quantize: {method: ort-dynamic-int8[, smooth: 0.5]}`
then `- export: {format: onnx}`: compress.quantization.quantize (the outlier check, here with
allow_outliers so the plain row is measured, then the smoothing fold), export.step.build_graph (ORT's
quantize_dynamic, looked up by the method's OnnxForm), and perplexity with the ORT runner, against the
torch fp32 teacher in the same run.
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A sibling script is named onnx.py: keep this folder off sys.path so `import onnx` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402

from compress.models import load_model, load_tokenizer  # noqa: E402
from compress.quantization import QuantizeConfig, quantize  # noqa: E402
from evalsuite.data import read_text, tokenize  # noqa: E402
from evalsuite.outliers import plant_outliers  # noqa: E402
from evalsuite.perplexity import perplexity  # noqa: E402
from evalsuite.runner import TorchRunner  # noqa: E402
from export.onnx import save_onnx  # noqa: E402
from export.ort_runner import OrtRunner  # noqa: E402
from export.step import ExportConfig, build_graph  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
TEACHER = DATA / "teachers" / "gpt2-6x384-corpus"
TOKENS = 20_000


def main() -> int:
    if not (TEACHER / "config.json").exists():
        print(f"reference teacher not found at {TEACHER} (needs ../shared/data beside the repo)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    tok = load_tokenizer(TEACHER)
    eval_ids = tokenize(read_text(DATA / "corpus" / "heldout"), tok)
    train_ids = tokenize(read_text(DATA / "corpus" / "train", max_chars=1_000_000), tok)
    hard = plant_outliers(load_model(TEACHER), (17, 138, 245, 371), 40.0)
    base = perplexity(TorchRunner(hard), eval_ids, seq_len=256, max_tokens=TOKENS, batch_size=8, progress=False).ppl
    for alpha in (None, 0.5):
        # the quantize step of method ort-dynamic-int8 (outlier check, smoothing), then the export's graph pass
        options = {"smooth": alpha} if alpha is not None else {}
        model = quantize(copy.deepcopy(hard), QuantizeConfig(method="ort-dynamic-int8", allow_outliers=True,
                                                             **options), train_ids)
        record = model.config.quantization_config["gpt2_edge"]["outliers"]
        graph, _ = build_graph(ExportConfig(), model, {}, logging.getLogger("bench"))
        with tempfile.TemporaryDirectory() as tmp:
            path = save_onnx(graph, Path(tmp) / "model.onnx")
            ppl = perplexity(OrtRunner(path, "cpu"), eval_ids, seq_len=256, max_tokens=TOKENS, batch_size=8,
                             progress=False).ppl
        print(f"hard ORT dynamic int8 smooth={alpha}: fp32 {base:.2f} -> {ppl:.2f} ({ppl / base:.4f}x); "
              f"checked worst: {record['worst_checked']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
