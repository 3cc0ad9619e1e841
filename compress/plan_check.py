"""The cross-step checks of a plan: one PlanState threaded through the source step and every step.

    state = PlanState(train_data=..., eval_seq_len=..., latency=...)
    for each step (the source `model:` first): state, problems = step.check(state)

Run by parse_plan after every step validated on its own (so a plan with problems loads no model),
and by --dry-run, which also prints the notes (checks that wait for a model of unknown shape) and the
shape each step leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from compress.source_config import source_step
from compress.plan_state import PlanState

if TYPE_CHECKING:
    from compress.plan import Plan


@dataclass
class StepChecks:
    problems: list[tuple[tuple, str]] = field(default_factory=list)  # (plan key path, message)
    notes: list[str] = field(default_factory=list)
    states: list[PlanState] = field(default_factory=list)  # after the source step, then after each step


def check_steps(plan: "Plan") -> StepChecks:
    out = StepChecks()
    lat = plan.eval.latency
    state = PlanState(train_data=plan.data.train is not None,
                      eval_seq_len=plan.data.eval.seq_len if plan.eval.perplexity else None,
                      latency=(lat.prompt, lat.new_tokens) if lat else None)
    located = [(("model",), "model", source_step(plan.model, plan.tokenizer))] + [
        (("steps", i, s.kind), f"steps[{i}].{s.kind}", s) for i, s in enumerate(plan.steps)]
    for loc, at, step in located:
        state, problems = step.check(replace(state, at=at))
        for p in problems:
            where = (*loc, *p.key.split(".")) if p.key else loc
            if p.note:
                out.notes.append(f"{at}: {p.msg}")
            else:
                out.problems.append((where, p.msg))
        out.states.append(state)
    return out
