"""Measuring finished steps: metrics.json of a step directory, with the run's tokenizer and eval text.

Every step is measured with the base model's tokenizer on the same eval token stream (tokenized once
per run). `open_step` opens a finished step's artifact with the runner of its backend; the plan runner
and eval.speculative (compress.speculative_eval) both measure through here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import UserError
from compress.hashing import digest
from compress.models import load_model, load_tokenizer
from compress.run_dir import read_json
from evalsuite.backends import open_backend
from evalsuite.deployment import TORCH
from evalsuite.errors import BackendUnavailable
from evalsuite.errors import EvalInputError
from evalsuite.metrics import KINDS, EvalSettings, ModelFacts, evaluate, gpt2_facts
from evalsuite.runner import Runner, TorchRunner
from evalsuite.size import bytes_on_disk

if TYPE_CHECKING:
    import torch

    from compress.plan import Plan

log = logging.getLogger("compress.pipeline")
BASE = "00-base"  # the source step's directory: the plan's model as the run's base


def eval_hash(plan: "Plan", eval_text_digest: str) -> str:
    """What a step's metrics depend on besides the step: the eval text (by content) and settings.
    ppl_budget only changes how the report reads the metrics and max_ppl_ratio only what is accepted,
    so neither re-measures anything; speculative is measured once for the pair."""
    return digest(eval_text_digest, plan.data.eval.model_dump(mode="json", exclude={"path"}),
                  plan.eval.model_dump(mode="json", exclude={"ppl_budget", "max_ppl_ratio", "speculative"}), plan.device)


def settings_of(plan: "Plan") -> EvalSettings:
    e, samples = plan.data.eval, plan.eval.samples
    return EvalSettings(seq_len=e.seq_len, stride=e.stride, max_tokens=e.max_tokens,
                        perplexity=plan.eval.perplexity,
                        latency=plan.eval.latency.model_dump() if plan.eval.latency else None,
                        targets=tuple(plan.eval.targets),
                        sample_prompts=tuple(samples.prompts) if samples else (),
                        sample_tokens=samples.new_tokens if samples else 0,
                        sampling=samples.sampling() if samples else None)


def data_label(plan: "Plan") -> str:
    e = plan.data.eval
    return e.path or (f"hf:{e.hf}/{e.name or ''}:{e.split or 'test'}" if e.hf else f"{e.builtin}:{e.split or 'train'}")


def artifact_facts(artifact: Path, runner: Runner | None) -> ModelFacts:
    """Roofline facts of an artifact (a model dir, or a file with config.json beside it) and its runner."""
    config_dir = artifact if artifact.is_dir() else artifact.parent
    facts = gpt2_facts(json.loads((config_dir / "config.json").read_text()), bytes_on_disk(config_dir, weights_only=True))
    return replace(facts, gathered_bytes=int(getattr(runner, "gathered_weight_bytes", 0)))


def deployment_fields(info: dict[str, Any]) -> dict[str, Any]:
    """What the report's "what to ship" reads of a step: its artifact (relative to the step dir) and the
    runtime its writer declared (an export target's, in step.json; a model dir runs in PyTorch)."""
    return {"artifact": info.get("artifact") or info.get("model_dir"),
            "runtime": (info.get("info") or {}).get("runtime") or TORCH.as_dict()}


def open_artifact(step_dir: Path, info: dict[str, Any], device: str) -> tuple[Path, str, Runner]:
    """(artifact path, backend, runner) of a step directory; BackendUnavailable when it cannot run here."""
    artifact = step_dir / (info.get("artifact") or info.get("model_dir"))
    backend = info.get("backend", "torch")
    runner = TorchRunner(load_model(artifact), device) if backend == "torch" else open_backend(backend, artifact, device)
    return artifact, backend, runner


def open_step(step_dir: Path, device: str) -> tuple[Runner, ModelFacts]:
    """The runner of a finished step's artifact and the roofline facts of it."""
    artifact, _, runner = open_artifact(step_dir, read_json(step_dir / "step.json"), device)
    return runner, artifact_facts(artifact, runner)


@dataclass
class Measurer:
    """metrics.json for the steps of one run: one tokenizer, one eval token stream."""

    plan: "Plan"
    run_dir: Path
    device: "torch.device"
    eval_text_digest: str
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)  # shared with the steps' contexts
    base_ppl: float | None = None

    @property
    def eval_hash(self) -> str:
        return eval_hash(self.plan, self.eval_text_digest)

    def tokenizer(self):
        """The base model's tokenizer: every step is measured and sampled with the same one."""
        if "tokenizer" not in self.cache:
            self.cache["tokenizer"] = load_tokenizer(self._base_model_dir())
        return self.cache["tokenizer"]

    def eval_ids(self) -> "torch.Tensor":
        if "eval_ids" not in self.cache:
            from compress.data import source_text
            from evalsuite.data import tokenize

            self.cache["eval_ids"] = tokenize(source_text(self.plan.data.eval), self.tokenizer())
        return self.cache["eval_ids"]

    def _base_model_dir(self) -> Path:
        for d in (self.run_dir / BASE / "model", self.run_dir / f".{BASE}.tmp" / "model"):
            if (d / "config.json").exists():
                return d
        raise FileNotFoundError("base model directory is missing")

    def measure(self, name: str, step_dir: Path, info: dict[str, Any], is_base: bool) -> dict[str, Any]:
        """metrics.json for one step directory."""
        try:
            artifact, backend, runner = open_artifact(step_dir, info, str(self.device))
        except BackendUnavailable as e:
            log.info("%s: %s; recording it as to be built on target", name, e)
            artifact, backend, runner = step_dir / info["artifact"], info.get("backend", "torch"), None
        config_dir = artifact if artifact.is_dir() else artifact.parent
        facts = gpt2_facts(json.loads((config_dir / "config.json").read_text()),
                           bytes_on_disk(config_dir, weights_only=True))
        # the tables the writer found only looked up (export.target.looked_up_bytes): a runner that opens
        # the artifact here says the same itself; one that cannot run here (TensorRT) is projected with them
        facts = replace(facts, gathered_bytes=int((info.get("info") or {}).get("gathered_weight_bytes") or 0))
        try:
            m = evaluate(runner, self.eval_ids(), facts, artifact, settings_of(self.plan), step=name,
                         kind=KINDS.get(backend, backend), backend=backend, device=str(self.device),
                         base_ppl=None if is_base else self.base_ppl, data_label=data_label(self.plan),
                         progress=self.progress, tokenizer=self.tokenizer())
        except EvalInputError as e:
            raise UserError(f"evaluating {name}: {e}") from None
        if is_base and m["ppl"] is not None:
            m["ppl_ratio_to_base"] = 1.0
        m["eval_hash"] = self.eval_hash
        m.update(deployment_fields(info))
        m["summary"] = info.get("summary", "")
        m["step_wall_s"] = info.get("wall_s")  # the step's own work, when it ran; eval_wall_s is its measurement
        # the step's own work's peak resident memory (step.json; "process start": could not be reset before it)
        m["step_peak_rss_bytes"], m["step_peak_rss_since"] = info.get("peak_rss_bytes"), info.get("peak_rss_since")
        if runner is not None:
            log.info("%s: ppl %s, decode %s ms/token", name, f"{m['ppl']:.2f}" if m["ppl"] else "–",
                     f"{m['decode_ms_per_token']['p50']:.2f}" if m["decode_ms_per_token"] else "–")
        return m
