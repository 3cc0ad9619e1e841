"""What a step sees of the plan: one frozen `StepInputs` per step, built by the runner.

A step class declares the plan inputs it reads (`StepConfig.reads`, a subset of INPUTS); the runner
gives it those and nothing else, and the step's content hash covers exactly them, by content:

    seed      the plan's seed
    train     data.train (the text source and the sha256 of its text)
    eval      data.eval (the source, the sha256 of its text, seq_len / stride / max_tokens)
    eval_text data.eval's text alone (a held-out stream that is not read in windows: pretraining)
    latency   eval.latency (prompt, new_tokens, batch), for steps that shape an engine around it
    files     the sha256 of every file of the local directories a source step reads (its `local_dirs()`:
              the model dir, a tokenizer dir), by role
    texts     the step's own text sources (its `own_texts()`: e.g. finetune's `data:` and `heldout:`), by
              role, each with the sha256 of its text: editing the file re-runs the step

So replacing the text of data.train re-runs every step that reads `train`, and changing only data.eval
re-measures steps without re-running the ones that do not read it. Reading an input that was not
declared is a programming error (UndeclaredInput), not a silent fallback to the whole plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.hashing import DigestCache
    from compress.plan import EvalData, LatencyConfig, Plan
    from compress.plan_types import TextSource

INPUTS = frozenset({"seed", "train", "eval", "eval_text", "latency", "files", "texts"})


class UndeclaredInput(TypeError):
    """A step read a plan input that its config class does not list in `reads`."""


@dataclass(frozen=True)
class TextInput:
    """A text source of the plan and the sha256 of the text it gives (compress.digests.text_digest)."""

    source: "TextSource"
    digest: str


@dataclass(frozen=True)
class EvalInput(TextInput):
    perplexity: bool = True  # eval.perplexity: False when the run measures no perplexity

    @property
    def data(self) -> "EvalData":
        return self.source  # type: ignore[return-value]

    @property
    def seq_len(self) -> int | None:
        """The perplexity window, or None when the plan measures no perplexity."""
        return self.data.seq_len if self.perplexity else None


@dataclass(frozen=True)
class StepInputs:
    """The plan inputs one step declared. `key()` is what its content hash covers."""

    declared: frozenset[str]
    _seed: int | None = None
    _train: TextInput | None = None
    _eval: EvalInput | None = None
    _latency: "LatencyConfig | None" = None
    _files: dict[str, str] | None = None
    _texts: dict[str, TextInput] | None = None
    step_key: str = ""  # the step's plan key path ('steps[2].quantize'), for messages

    def _get(self, name: str) -> Any:
        if name not in self.declared:
            raise UndeclaredInput(f"this step reads {name!r} but its config class does not declare it in `reads` "
                                  f"(declared: {', '.join(sorted(self.declared)) or 'none'})")
        return getattr(self, "_eval" if name == "eval_text" else f"_{name}")

    @property
    def seed(self) -> int:
        return self._get("seed")

    @property
    def train(self) -> TextInput | None:
        """data.train, or None when the plan has none."""
        return self._get("train")

    @property
    def eval(self) -> EvalInput:
        """data.eval (declared as `eval`, or as `eval_text` by a step that reads only its text)."""
        return self._get("eval" if "eval" in self.declared else "eval_text")

    @property
    def latency(self) -> "LatencyConfig | None":
        """eval.latency, or None when the plan measures no latency."""
        return self._get("latency")

    @property
    def files(self) -> dict[str, str]:
        """role ('model', 'tokenizer') -> digest of that directory's files."""
        return self._get("files") or {}

    @property
    def texts(self) -> dict[str, TextInput]:
        """role ('data', 'heldout') -> the step's own text source and the digest of its text."""
        return self._get("texts") or {}

    def key(self) -> dict[str, Any]:
        """The declared inputs by content: digests of texts, values of settings."""
        out: dict[str, Any] = {}
        if "seed" in self.declared:
            out["seed"] = self._seed
        if "train" in self.declared:
            out["train"] = _text_key(self._train)
        if "eval" in self.declared:
            out["eval"] = _text_key(self._eval) | {"perplexity": self._eval.perplexity if self._eval else None}
        elif "eval_text" in self.declared:
            out["eval_text"] = _text_key(self._eval, settings=False)
        if "files" in self.declared:
            out["files"] = dict(sorted((self._files or {}).items()))
        if "texts" in self.declared:
            out["texts"] = {role: _text_key(t) for role, t in sorted((self._texts or {}).items())}
        if "latency" in self.declared:
            out["latency"] = self._latency.model_dump(mode="json") if self._latency else None
        return out


WINDOWS = {"seq_len", "stride", "max_tokens"}  # how data.eval is read in windows, not what it says


def _text_key(t: TextInput | None, settings: bool = True) -> dict[str, Any]:
    if t is None:
        return {"text": None}
    # the text by content (the digest; max_chars and split change it too), then how it is read
    fields = t.source.model_dump(mode="json", exclude={"path"} if settings else {"path", *WINDOWS})
    return {"text": t.digest, **fields}


def inputs_for(plan: "Plan", step: Any, step_key: str, cache: "DigestCache") -> StepInputs:
    """The StepInputs of one step of a plan: only what its class declares, texts and dirs by digest."""
    from compress.data import text_digest
    from compress.hashing import dir_digest

    declared = frozenset(step.reads)
    unknown = declared - INPUTS
    if unknown:
        raise TypeError(f"{type(step).__name__}.reads names unknown inputs {sorted(unknown)} (known: {sorted(INPUTS)})")
    train = plan.data.train if "train" in declared else None
    evaluation = plan.data.eval if declared & {"eval", "eval_text"} else None
    files = ({role: (dir_digest(Path(d), cache) if Path(d).is_dir() else cache.file(Path(d)))
              for role, d in step.local_dirs().items()} if "files" in declared else None)
    texts = ({role: TextInput(src, text_digest(src, cache)) for role, src in step.own_texts().items()}
             if "texts" in declared else None)
    return StepInputs(
        declared=declared, step_key=step_key,
        _seed=plan.seed if "seed" in declared else None,
        _train=TextInput(train, text_digest(train, cache)) if train is not None else None,
        _eval=EvalInput(evaluation, text_digest(evaluation, cache), plan.eval.perplexity) if evaluation else None,
        _latency=plan.eval.latency if "latency" in declared else None,
        _files=files, _texts=texts)
