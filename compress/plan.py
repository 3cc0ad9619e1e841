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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, model_validator

from compress.source_config import ModelSpec, PretrainModel
from compress.catalog import missing_steps_hint, step_configs
from compress.errors import PlanError
from compress.plan_check import check_steps
from compress.plan_locations import apply_override, clean_loc, format_loc, line_for, message, node_lines, override_path
from compress.plan_types import ExistingPath, Seed, Strict, TextSource
from compress.search.config import SearchConfig, plan_problems as search_problems
from compress.step_api import StepConfig
from compress.yaml_io import read_yaml_file
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
    seed: Seed = SamplingSettings.seed

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
    seed: Seed = 0
    data: DataConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    steps: list[SerializeAsAny[StepConfig]] = Field(default_factory=list)
    search: SearchConfig | None = Field(None, description="search for the best plan under a budget (docs/search.md)")

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
        out = self.model_dump(mode="json", exclude={"steps", "search"})
        if self.search is not None:
            out["search"] = self.search.model_dump(mode="json")
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
    lines = node_lines(root)
    return parse_plan(raw, base_dir=path.parent.resolve(), source=str(path), lines=lines, problems=problems,
                      overrides=[o for o in overrides if not any(p.startswith(f"--set {o}: ") for p in problems)])


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
               lines: dict[tuple, int] | None = None, problems: list[str] | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Validate a plan given as a dict. Steps are validated one by one so every problem is found.
    A problem under a key path an override (`--set a.b=v`) set names that --set, not a line of the file."""
    problems = list(problems or [])
    lines = lines or {}
    set_paths = {override_path(o): o for o in overrides}
    context = {"base_dir": base_dir}
    raw = dict(raw)
    raw_steps = raw.pop("steps", None) or []
    known = step_configs()

    def add(loc: tuple, msg: str) -> None:
        clean = clean_loc(loc)
        by_set = max((p for p in set_paths if clean[:len(p)] == p), key=len, default=None)
        if by_set is not None:
            problems.append(f"{format_loc(loc)}: {msg} (--set {set_paths[by_set]})")
            return
        line = line_for(lines, loc)
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
                add(("steps", i, kind, *err["loc"]), message(err, known[kind]))
    try:
        plan = Plan.model_validate(raw, context=context)
    except ValidationError as e:
        for err in e.errors():
            add(err["loc"], message(err, Plan))
        plan = None
    if plan is not None and not problems:
        plan = plan.model_copy(update={"steps": steps})
        for loc, msg in check_steps(plan).problems:  # the steps' checks, with the model's real shapes
            add(loc, msg)
        for loc, msg in speculative_problems(plan):
            add(loc, msg)
        for loc, msg in search_problems(plan):
            add(loc, msg)
    if problems:
        raise PlanError(problems, source=source)
    assert plan is not None  # no problems means the plan validated
    return plan


def dump_plan(plan: Plan) -> str:
    return yaml.safe_dump(plan.to_yaml_dict(), sort_keys=False)
