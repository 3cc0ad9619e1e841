"""The divergence guard of the training loop (pretrain, distill): a model that got worse never passes.

It judges the loop's own held-out perplexity (the quick in-training eval) against the perplexity
measured before the first optimizer step:

- a non-finite held-out loss fails at once;
- a held-out ppl above `max_ppl_rise` x the ppl before training (default 10x) fails at that eval:
  the run diverged (pretraining starts from random init, near-uniform, so there the bound is about
  10x the vocab size);
- at the end, the weights handed on (the best held-out eval's, with `restore_best`, the default)
  may not be worse than before training by more than `end_tolerance` (default 1%).

Without held-out evaluation (distill `eval_tokens: 0`, pretrain without eval text) only the rise
bound applies, to the training loss: it may not climb more than ln(max_ppl_rise) nats above the
first step's. A non-finite training loss fails at the step it appears. Failing is a
`DivergenceError`, a compress.gate.Refusal (one line, exit 2), raised before the step is marked done;
the message names what was kept and how to go on. This module imports no torch, so plan validation
stays light.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from compress.gate import Refusal


class DivergenceError(Refusal):
    """Training made the model worse; the step is not marked done."""


class GuardConfig(BaseModel):
    """Limits of the divergence guard (the plan's `guard:` of a pretrain or distill step)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_ppl_rise: float = Field(10.0, gt=1, le=1e6, description="fail when held-out ppl exceeds this multiple "
                                                                 "of the ppl before training")
    end_tolerance: float = Field(0.01, ge=0, le=10, description="the weights handed on may be at most this "
                                                                "fraction worse than before training")
    restore_best: bool = Field(True, description="hand on the best held-out eval's weights, not the last")


class Guarded(BaseModel):
    """Mixin of the training configs (pretrain, distill): the `guard:` key.

    Left out of the serialized config while it holds the defaults, so the content hashes of existing
    plans (and their finished steps) do not change; the guard only accepts or refuses a result.
    """

    guard: GuardConfig = Field(default_factory=GuardConfig, description="divergence guard (compress.divergence)")
    # Other keys of the subclass left out the same way while they hold these values (options added
    # later whose default leaves the results as they were, so old hashes stay valid).
    omitted_when: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_default_guard(self, handler: Any) -> Any:
        out = handler(self)
        if isinstance(out, dict):
            if self.guard == GuardConfig():
                out.pop("guard", None)
            for key, value in self.omitted_when.items():
                if getattr(self, key) == value:
                    out.pop(key, None)
        return out


def safe_exp(x: float) -> float:
    """exp that says inf instead of raising OverflowError (a diverged loss is thousands of nats)."""
    return math.exp(x) if x < 700 else float("inf")


class DivergenceGuard:
    """The checks, given the held-out ppl before training (None: none measured) and how to go on."""

    def __init__(self, name: str, cfg: GuardConfig, before_ppl: float | None, advice: str):
        self.name, self.cfg, self.before, self.advice = name, cfg, before_ppl, advice

    def check_eval(self, step: int, ppl: float, kept: str) -> None:
        """At a held-out eval during training."""
        if not math.isfinite(ppl):
            self._fail(f"held-out ppl became {ppl} at step {step}", kept)
        if self.before is not None and ppl > self.cfg.max_ppl_rise * self.before:
            self._fail(f"held-out ppl {ppl:.4g} at step {step} is above {self.cfg.max_ppl_rise:g}x the "
                       f"{self.before:.4g} before training (guard.max_ppl_rise)", kept)

    def check_finite(self, step: int, terms: dict[str, float], kept: str) -> None:
        """After every optimizer step: every loss term is a finite number."""
        if not all(math.isfinite(v) for v in terms.values()):
            self._fail(f"loss became non-finite at step {step} ({', '.join(f'{k}={v}' for k, v in terms.items())})",
                       kept)

    def check_train_loss(self, step: int, loss: float, first_loss: float | None, kept: str) -> None:
        """After every optimizer step when there is no held-out eval."""
        if first_loss is not None and loss > first_loss + math.log(self.cfg.max_ppl_rise):
            self._fail(f"training loss {loss:.4g} at step {step} rose more than ln({self.cfg.max_ppl_rise:g}) "
                       f"above the first step's {first_loss:.4g} (guard.max_ppl_rise)", kept)

    def check_end(self, step: int, ppl: float, best_step: int | None, kept: str) -> None:
        """On the weights about to be handed on (held-out ppl `ppl`, from the eval at `best_step`)."""
        if not math.isfinite(ppl):
            self._fail(f"held-out ppl of the final weights is {ppl}", kept)
        if self.before is not None and ppl > self.before * (1 + self.cfg.end_tolerance):
            which = f"the best eval (step {best_step})" if best_step is not None else "the final weights"
            self._fail(f"training made the model worse: held-out ppl {self.before:.4g} before training, "
                       f"{ppl:.4g} at {which} after {step} steps (guard.end_tolerance "
                       f"{self.cfg.end_tolerance:g})", kept)

    def _fail(self, what: str, kept: str) -> None:
        raise DivergenceError(self.name, what, kept=f"{kept}; the step is not marked done", how=self.advice)
