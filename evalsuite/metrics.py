"""One metrics.json schema for every step and backend, and the function that fills it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from evalsuite import hardware
from evalsuite.latency import measure_latency
from evalsuite.perplexity import perplexity
from evalsuite.runner import Runner
from evalsuite.samples import SamplingSettings, generate_samples
from evalsuite.size import bytes_on_disk, gpt2_param_count

SCHEMA_VERSION = 1
STATUS_MEASURED = "measured"
STATUS_TO_BUILD = "to be built on target"
KINDS = {"torch": "torch", "onnxruntime": "onnx", "tensorrt": "trt"}  # backend -> artifact kind


@dataclass(frozen=True)
class EvalSettings:
    """What to measure (mirrors the plan's data.eval and eval sections)."""

    seq_len: int = 256
    stride: int | None = None
    max_tokens: int | None = None
    perplexity: bool = True
    latency: dict[str, int | None] | None = field(default_factory=lambda: {"prompt": 128, "new_tokens": 64})
    targets: tuple[str, ...] = ("orin-nano", "agx-orin")
    sample_prompts: tuple[str, ...] = ()  # continuations shown in the report (needs a tokenizer)
    sample_tokens: int = 32
    sampling: SamplingSettings | None = SamplingSettings()  # None: the greedy continuation only


@dataclass(frozen=True)
class ModelFacts:
    """What the roofline needs to know about a model, whatever the backend."""

    params: int
    n_layer: int
    n_embd: int
    weight_bytes: int  # bytes of the weights as deployed
    # Tables that are only looked up (position embeddings; the token embedding when the LM head is a
    # separate copy): a decode step reads one row of them, not the whole table.
    gathered_bytes: int = 0

    @property
    def read_bytes(self) -> int:
        """Weight bytes one decode step reads: every weight except the looked-up tables."""
        return max(self.weight_bytes - self.gathered_bytes, 0)


def gpt2_facts(config: dict[str, Any], weight_bytes: int) -> ModelFacts:
    """Logical parameter count of a GPT-2 from its config (unchanged by quantization)."""
    E = config["n_embd"]
    params = gpt2_param_count(config["vocab_size"], config["n_positions"], config["n_layer"], E,
                              config.get("n_inner") or 4 * E, config.get("tie_word_embeddings", True))
    return ModelFacts(params=int(params), n_layer=config["n_layer"], n_embd=E, weight_bytes=weight_bytes)


def projections(facts: ModelFacts, targets: tuple[str, ...], context: int, batch: int = 1) -> dict[str, float]:
    """Roofline decode tokens/s per target (fp16 KV cache on GPUs, fp32 on the host)."""
    out = {}
    for name in targets:
        t = hardware.target(name)
        kv = hardware.kv_bytes_per_token(facts.n_layer, facts.n_embd, context, 4 if name == hardware.HOST else 2)
        out[name] = hardware.projected_decode_tokens_per_s(t.memory_bandwidth_gb_s, facts.read_bytes, kv, batch)
    return out


def host_roofline(facts: ModelFacts, context: int, batch: int, measured_tokens_per_s: float) -> dict[str, float]:
    """The host's projected decode tokens/s next to the measured one, and their ratio."""
    projected = projections(facts, (hardware.HOST,), context, batch)[hardware.HOST]
    return {"bandwidth_gb_s": hardware.measure_host_bandwidth(), "projected_tokens_per_s": projected,
            "measured_over_projected": hardware.roofline_fraction(measured_tokens_per_s, projected)}


def empty_metrics(step: str, kind: str, backend: str, device: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "step": step, "kind": kind, "backend": backend, "device": device,
        "status": STATUS_MEASURED, "params": None, "bytes_on_disk": None, "weight_bytes": None,
        "ppl": None, "ppl_ratio_to_base": None, "eval": None,
        "prefill_ms": None, "decode_ms_per_token": None, "tokens_per_s": None, "peak_mem_bytes": None,
        "latency": None, "projected_decode_tokens_per_s": {}, "host_roofline": None, "samples": None,
        "sampling": None,
        "eval_wall_s": None,
    }


def evaluate(runner: Runner | None, eval_ids: torch.Tensor | None, facts: ModelFacts, artifact: Path,
             settings: EvalSettings, *, step: str, kind: str, backend: str, device: str,
             base_ppl: float | None = None, data_label: str = "", progress: bool = True,
             tokenizer=None) -> dict[str, Any]:
    """Measure one artifact. With runner None (e.g. a TensorRT engine that can only be built on the
    target), size and projections are filled and the status says it is to be built on target."""
    t0 = time.perf_counter()
    if runner is not None:  # the runner knows which of its tables are only looked up
        facts = replace(facts, gathered_bytes=int(getattr(runner, "gathered_weight_bytes", 0)))
    m = empty_metrics(step, kind, backend, device)
    m.update(params=facts.params, bytes_on_disk=bytes_on_disk(artifact), weight_bytes=facts.weight_bytes,
             read_bytes_per_token=facts.read_bytes)
    lat = settings.latency or {}
    context = int(lat.get("prompt") or 128) + int(lat.get("new_tokens") or 64)
    m["projected_decode_tokens_per_s"] = projections(facts, settings.targets, context, int(lat.get("batch") or 1))
    if runner is None:
        m["status"] = STATUS_TO_BUILD
        return m
    if settings.perplexity and eval_ids is not None:
        r = perplexity(runner, eval_ids, settings.seq_len, settings.stride, settings.max_tokens, progress=progress)
        m["ppl"] = r.ppl
        m["ppl_ratio_to_base"] = r.ppl / base_ppl if base_ppl else None
        m["eval"] = {"data": data_label, "seq_len": r.seq_len, "stride": r.stride, "tokens_scored": r.tokens_scored,
                     "tokens_total": r.tokens_total, "windows": r.windows}
    if settings.latency is not None:
        lr = measure_latency(runner, progress=progress, **{k: v for k, v in settings.latency.items() if v is not None})
        m["prefill_ms"] = lr.prefill_ms
        m["decode_ms_per_token"] = lr.decode_ms_per_token
        m["tokens_per_s"] = lr.tokens_per_s
        m["peak_mem_bytes"] = lr.peak_mem_bytes
        m["latency"] = {"batch": lr.batch, "prompt": lr.prompt, "new_tokens": lr.new_tokens,
                        "repeats": lr.repeats, "threads": lr.threads, "cpu": hardware.host_cpu(),
                        "other_cores": lr.other_cores, "unreliable": lr.unreliable}
        if device == "cpu":  # the host is the one device where both the bound and a measurement exist
            m["host_roofline"] = host_roofline(facts, context, lr.batch, lr.tokens_per_s)
    if tokenizer is not None and settings.sample_prompts:
        m["samples"] = generate_samples(runner, tokenizer, settings.sample_prompts, settings.sample_tokens,
                                        settings.sampling)
        if settings.sampling is not None:
            m["sampling"] = {**settings.sampling.describe(), "new_tokens": settings.sample_tokens}
    m["eval_wall_s"] = time.perf_counter() - t0
    return m
