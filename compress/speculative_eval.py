"""The plan's `eval.speculative`: once every step is done, measure one step's artifact as the draft of
another's (evalsuite.speculative_measure) and hand the result to the report on the target's row.

    eval:
      speculative: {draft: 04-export-onnx, target: 00-base, k: [2, 4, 6]}

The result is kept in runs/<name>/speculative.json under a hash of what it depends on (both steps'
hashes, the settings, the eval text), so a rerun that changed none of them measures nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from compress.errors import UserError
from compress.hashing import digest
from compress.measure import open_step
from compress.plan import Plan
from compress.run_dir import write_json
from evalsuite.errors import BackendUnavailable
from evalsuite.errors import EvalInputError
from evalsuite.speculative_measure import SpeculativeMeasureSettings, measure_speculative, prompts_from

log = logging.getLogger(__name__)
RESULT_FILE = "speculative.json"


def measurement_settings(plan: Plan) -> SpeculativeMeasureSettings:
    spec, lat = plan.eval.speculative, plan.eval.latency
    timing = {"prompt": lat.prompt, "new_tokens": lat.new_tokens, "warmup": lat.warmup, "threads": lat.threads} if lat else {}
    return SpeculativeMeasureSettings(ks=tuple(spec.k), prompts=spec.prompts, repeats=spec.repeats,
                                      adaptive=spec.adaptive, **timing)


def attach_speculative(plan: Plan, run_dir: Path, rows: list[dict[str, Any]], device: str,
                       eval_ids: Callable[[], torch.Tensor], eval_text_digest: str) -> dict[str, Any]:
    """Measure (or reuse) eval.speculative and put the result on the target step's row."""
    spec = plan.eval.speculative
    target_dir, draft_dir = run_dir / spec.target, run_dir / spec.draft
    settings = measurement_settings(plan)
    key = digest([json.loads((d / "step.json").read_text())["hash"] for d in (target_dir, draft_dir)],
                 spec.model_dump(mode="json"), settings.__dict__, eval_text_digest,
                 plan.data.eval.model_dump(mode="json", exclude={"path"}), list(plan.eval.targets))
    path = run_dir / RESULT_FILE
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("key") == key:
        result = cached["result"]
    else:
        result = _measure(spec.target, spec.draft, target_dir, draft_dir, settings, plan, device, eval_ids)
        write_json(path, {"key": key, "result": result})
    row = next(r for r in rows if r["step"] == spec.target)
    row["speculative"] = result
    return result


def _measure(target_name: str, draft_name: str, target_dir: Path, draft_dir: Path,
             settings: SpeculativeMeasureSettings, plan: Plan, device: str,
             eval_ids: Callable[[], torch.Tensor]) -> dict[str, Any]:
    try:
        target, target_facts = open_step(target_dir, device)
        draft, draft_facts = open_step(draft_dir, device)
    except BackendUnavailable as e:
        log.info("eval.speculative: %s; not measured", e)
        return {"status": str(e), "draft_step": draft_name}
    log.info("eval.speculative: %s as the draft of %s, k %s", draft_name, target_name, list(settings.ks))
    try:
        result = measure_speculative(target, draft, prompts_from(eval_ids(), settings.prompts, settings.prompt),
                                     target_facts, draft_facts, settings, tuple(plan.eval.targets))
    except EvalInputError as e:
        raise UserError(f"eval.speculative: {e}") from None
    if not all(r["identical_to_target"] for r in result["per_k"]):
        log.warning("eval.speculative: greedy text with the draft differs from the target's own for some prompts "
                    "(numerics of the batched verification); see the report")
    return {**result, "draft_step": draft_name}

