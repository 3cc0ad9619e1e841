"""The one place a worse model is refused: every acceptance rule of a run returns a `Refusal`.

A refusal says, in one line and one style, what was found, where (the plan key path or step), what
was kept and how to go on:

    <where>: <what>; <kept>; <how to go on>

The rules: a non-finite training loss and the divergence guard (compress.divergence, during training), a
step whose perplexity rose above eval.max_ppl_ratio times its input's (check_ppl_ratio, here), an
activation outlier that a per-tensor int8 method cannot take (compress.quantization.outlier_check),
and an export whose file does not reproduce the model (export.step). None of them marks the step done.
This module imports no torch.
"""

from __future__ import annotations

import math
from typing import Any

from compress.errors import UserError


class Refusal(UserError):
    """A result refused by an acceptance rule; the step is not marked done."""

    def __init__(self, where: str, what: str, kept: str = "", how: str = ""):
        self.where, self.what, self.kept, self.how = where, what, kept, how
        super().__init__("; ".join(part for part in (f"{where}: {what}", kept, how) if part))


def check_ppl_ratio(name: str, step: Any, metrics: dict[str, Any], input_ppl: float | None, limit: float,
                    kept: str) -> None:
    """eval.max_ppl_ratio: a step that changed weights must not leave a model far worse than its input."""
    ppl = metrics.get("ppl")
    if not getattr(step, "changes_weights", False) or ppl is None or input_ppl is None:
        return
    ratio = ppl / input_ppl
    if not (math.isfinite(ratio) and ratio <= limit):
        raise Refusal(name, f"ppl {ppl:.4g} is {ratio:.4g}x its input's {input_ppl:.4g}, above eval.max_ppl_ratio "
                            f"{limit:g}; the run stops here and {name} is not marked done",
                      kept=f"its result is kept in {kept}", how="raise eval.max_ppl_ratio to accept it")


def check_export(name: str, file: str | None, problems: list[str]) -> None:
    """An exported file must reproduce the model it came from within the export's limits."""
    if problems:
        where = f"{file}: " if file else ""
        raise Refusal(name, f"export validation failed: {where}{'; '.join(problems)}",
                      kept="validation.json in the step's temporary directory records the comparison",
                      how="loosen the export's validation limits only if the gap is expected (e.g. a coarser format)")
