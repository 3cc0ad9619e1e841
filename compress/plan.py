"""The plan: a YAML file validated into pydantic models, every problem reported at once.

    name: quickstart
    model: {pretrain: {n_layer: 4, n_embd: 256}}   # or an HF id, or a local checkpoint dir
    data:
      train: {builtin: python-docs, split: train}
      eval:  {builtin: python-docs, split: heldout, seq_len: 128}
    steps:
      - prune: {mlp: 0.5}

Paths are relative to the plan file. Unknown keys, wrong types, out-of-range values, unknown steps,
missing files, empty eval text and non-GPT-2 model dirs all fail here, before any model loads, with
one line per problem naming the key path and the YAML line.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, model_validator

from compress.base_model import (ModelSpec, PretrainConfig, PretrainModel, TokenizerSpec,  # noqa: F401 (re-exported)
                                 TrainTokenizer)
from compress.errors import PlanError, UserError
from compress.plan_check import check_steps
from compress.plan_types import ExistingPath, ModelSource, PlanPath, Strict, TextSource  # noqa: F401 (re-exported)
from compress.steps import StepConfig, missing_steps_hint, step_configs
from compress.yaml_io import compose_bounded, parse_yaml_value, read_yaml_file
from evalsuite.data import read_text
from evalsuite.errors import EvalInputError
from evalsuite.hardware import KNOWN_TARGETS
from evalsuite.samples import DEFAULT_NEW_TOKENS, DEFAULT_PROMPTS, SamplingSettings
from evalsuite.summary import DEFAULT_PPL_BUDGET


# -- data ------------------------------------------------------------------------------------------

class EvalData(TextSource):
    seq_len: int = Field(256, ge=8, le=8192)
    stride: int | None = Field(None, ge=1, description="default: seq_len (non-overlapping windows)")
    max_tokens: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _check(self) -> "EvalData":
        if self.stride is not None and self.stride > self.seq_len:
            raise ValueError(f"stride ({self.stride}) must not exceed seq_len ({self.seq_len})")
        if self.path is not None:
            try:
                read_text(self.path)
            except EvalInputError as e:
                raise ValueError(str(e)) from None
        return self


class DataConfig(Strict):
    train: TextSource | None = None
    eval: EvalData


def step_names(plan: "Plan") -> list[str]:
    """The run directory's step names: 00-base (the plan's model), then 01-<slug> for each step."""
    return ["00-base"] + [f"{i:02d}-{s.slug()}" for i, s in enumerate(plan.steps, 1)]


# -- evaluation ------------------------------------------------------------------------------------

class LatencyConfig(Strict):
    prompt: int = Field(128, ge=1, le=8192)
    new_tokens: int = Field(64, ge=1, le=8192)
    repeats: int = Field(10, ge=1, le=1000)
    warmup: int = Field(2, ge=0, le=100)
    batch: int = Field(1, ge=1, le=256)
    threads: int | None = Field(None, ge=1, le=1024, description="default: torch's own setting")


class SamplesConfig(Strict):
    """Continuations of the same prompts by every step, shown side by side in the report: sampled
    (top-p, temperature, repetition penalty, a fixed seed: reproducible) and greedy (the parity check)."""

    prompts: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1, max_length=20)
    new_tokens: int = Field(DEFAULT_NEW_TOKENS, ge=1, le=512)
    temperature: float = Field(SamplingSettings.temperature, gt=0, le=100)
    top_p: float = Field(SamplingSettings.top_p, gt=0, le=1)
    repetition_penalty: float = Field(SamplingSettings.repetition_penalty, gt=0, le=100,
                                      description="> 1 discourages tokens already seen (sampled text only)")
    seed: int = Field(SamplingSettings.seed, ge=0)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(temperature=self.temperature, top_p=self.top_p,
                                repetition_penalty=self.repetition_penalty, seed=self.seed)


class SpeculativeEvalConfig(Strict):
    """Measure one step's artifact as the speculative-decoding draft of another (docs/speculative.md)."""

    draft: str = Field(min_length=1, description="step directory name of the draft, e.g. 04-export-onnx")
    target: str = Field("00-base", min_length=1, description="step directory name of the target")
    k: list[Annotated[int, Field(ge=1, le=16)]] = Field(default_factory=lambda: [2, 4, 6], min_length=1,
                                                        max_length=16)
    adaptive: bool = Field(False, description="also measure adaptive k, starting at each k")
    prompts: int = Field(4, ge=1, le=64, description="prompts taken from the eval text")
    repeats: int = Field(3, ge=1, le=100, description="round-robin timing rounds (median)")


def speculative_problems(plan: "Plan") -> list[tuple[tuple, str]]:
    """(key path, message) for eval.speculative steps that are not in the plan."""
    spec = plan.eval.speculative
    if spec is None:
        return []
    names = step_names(plan)
    out = [(("eval", "speculative", key), f"no step named {value!r} (steps: {', '.join(names)})")
           for key, value in (("draft", spec.draft), ("target", spec.target)) if value not in names]
    if spec.draft == spec.target:
        out.append((("eval", "speculative", "draft"), "the draft must be another step than the target"))
    return out


class EvalConfig(Strict):
    perplexity: bool = True
    latency: LatencyConfig | None = Field(default_factory=LatencyConfig, description="null: skip latency")
    targets: list[Literal[KNOWN_TARGETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["orin-nano", "agx-orin"])
    samples: SamplesConfig | None = Field(default_factory=SamplesConfig, description="null: no sample generations")
    ppl_budget: float = Field(DEFAULT_PPL_BUDGET, ge=1.0, le=100.0,
                              description="the report's best point: the fastest step with ppl <= ppl_budget x base")
    max_ppl_ratio: float = Field(50.0, gt=1.0, le=1e6,
                                 description="a step that changes weights (prune, distill, quantize) and ends "
                                             "with ppl above this multiple of its input's stops the run")
    speculative: SpeculativeEvalConfig | None = Field(None, description="measure a step as another's draft")


# -- the plan --------------------------------------------------------------------------------------

class Plan(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    model: ModelSpec
    tokenizer: ExistingPath | None = Field(None, description="default: the model's own")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads of the run (the CLI's --threads "
                                                                 "wins); default: the physical cores")
    seed: int = 0
    data: DataConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    steps: list[SerializeAsAny[StepConfig]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _pretrain_fits_data(self) -> "Plan":
        if isinstance(self.model, PretrainModel):
            if self.data.train is None:
                raise ValueError("model.pretrain needs data.train")
            if self.data.eval.seq_len > self.model.pretrain.n_positions:
                raise ValueError(f"data.eval.seq_len ({self.data.eval.seq_len}) exceeds "
                                 f"model.pretrain.n_positions ({self.model.pretrain.n_positions})")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved plan in the same shape as the YAML (steps as one-key mappings)."""
        out = self.model_dump(mode="json", exclude={"steps"})
        out["steps"] = [{s.kind: s.model_dump(mode="json")} for s in self.steps]
        return out


# -- loading ---------------------------------------------------------------------------------------

def load_plan(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Read, override (`--set a.b=v`) and validate a plan file; PlanError lists every problem."""
    path = Path(path)
    raw, root = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise PlanError(["the plan must be a YAML mapping (name:, model:, data:, steps:)"], source=str(path))
    problems = apply_overrides(raw, overrides)
    lines = _node_lines(root)
    return parse_plan(raw, base_dir=path.parent.resolve(), source=str(path), lines=lines, problems=problems)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Apply every `a.b=v` override to a raw plan in place; one problem line per override refused."""
    problems = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ValueError as e:
            problems.append(f"--set {item}: {e}")
    return problems


def parse_plan(raw: dict[str, Any], base_dir: Path = Path("."), source: str | None = None,
               lines: dict[tuple, int] | None = None, problems: list[str] | None = None) -> Plan:
    """Validate a plan given as a dict. Steps are validated one by one so every problem is found."""
    problems = list(problems or [])
    lines = lines or {}
    context = {"base_dir": base_dir}
    raw = dict(raw)
    raw_steps = raw.pop("steps", None) or []
    known = step_configs()

    def add(loc: tuple, msg: str) -> None:
        line = _line_for(lines, loc)
        problems.append(f"{format_loc(loc)}: {msg}" + (f" (line {line})" if line else ""))

    steps: list[StepConfig] = []
    if not isinstance(raw_steps, list):
        add(("steps",), "must be a list of one-key mappings, e.g. '- prune: {mlp: 0.5}'")
        raw_steps = []
    for i, item in enumerate(raw_steps):
        if not isinstance(item, dict) or len(item) != 1:
            add(("steps", i), f"must be a mapping with exactly one key, one of: {', '.join(known) or '(none)'}")
            continue
        kind, body = next(iter(item.items()))
        if kind not in known:
            hint = difflib.get_close_matches(str(kind), known, n=1)
            add(("steps", i, kind), "unknown step" + (f"; did you mean '{hint[0]}'?" if hint
                                                      else f" (known: {', '.join(known) or 'none'})")
                + (f"; {missing_steps_hint()}" if missing_steps_hint() else ""))
            continue
        try:
            steps.append(known[kind].model_validate(body or {}, context=context))
        except ValidationError as e:
            for err in e.errors():
                add(("steps", i, kind, *err["loc"]), _message(err))
    try:
        plan = Plan.model_validate(raw, context=context)
    except ValidationError as e:
        for err in e.errors():
            add(err["loc"], _message(err))
        plan = None
    if plan is not None and not problems:
        plan = plan.model_copy(update={"steps": steps})
        for loc, msg in check_steps(plan).problems:  # the steps' checks, with the model's real shapes
            add(loc, msg)
        for loc, msg in speculative_problems(plan):
            add(loc, msg)
    if problems:
        raise PlanError(problems, source=source)
    assert plan is not None  # no problems means the plan validated
    return plan


_UNION_TAGS = {"source", "dir", "train", "pretrain"}


def format_loc(loc: tuple) -> str:
    """('steps', 2, 'quantize', 'bits') -> 'steps[2].quantize.bits' (union tags dropped)."""
    out = ""
    for part in _clean(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(plan)"


def _message(err: dict) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    if err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {json.dumps(err['input'], default=str)})"
    return msg


def _clean(loc: tuple) -> tuple:
    """The YAML key path of a pydantic location (union tags dropped)."""
    out: list = []
    for part in loc:
        if out and part == out[-1] and part in _UNION_TAGS:
            continue
        if part in ("source", "dir") and out and out[-1] in ("model", "tokenizer"):
            continue
        out.append(part)
    return tuple(out)


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    """Line of the deepest existing YAML node on the path (the key itself when it exists)."""
    loc = _clean(loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line number."""
    try:
        return _node_lines(compose_bounded(text))
    except (yaml.YAMLError, PlanError):
        return {}


def _node_lines(root: yaml.Node | None) -> dict[tuple, int]:
    """Key path -> line of a composed document. A node reached again through an alias is not walked
    again (a path through an alias reports the alias's line), so an alias bomb costs linear time."""
    out: dict[tuple, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                out[(*path, key.value)] = key.start_mark.line + 1
                children.append((value, (*path, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[(*path, i)] = item.start_mark.line + 1
                children.append((item, (*path, i)))
        stack.extend(reversed(children))  # depth first in document order: an anchor before its aliases
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `a.b.0.c=value` (value parsed as YAML) to the raw plan dict, in place."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError("expected KEY.PATH=VALUE")
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{'.'.join(parts[:depth + 1])}: no list item {part}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                if parts[depth + 1].isdigit():
                    raise ValueError(f"{'.'.join(parts[:depth + 1])}: no such list in the plan")
                node[part] = {}
        else:
            raise ValueError(f"{'.'.join(parts[:depth])} is not a mapping or list")
        if last:
            node[part] = parse_yaml_value(value)
        else:
            node = node[part]


def dump_plan(plan: Plan) -> str:
    return yaml.safe_dump(plan.to_yaml_dict(), sort_keys=False)
