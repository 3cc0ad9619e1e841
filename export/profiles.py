"""TensorRT optimization profiles: (min, opt, max) of batch, prompt length and past length.

Computed once from the plan and written once (engine.json), so the engine build, the trtexec command
line and the docs all use the same numbers. A profile is three points; at each point every input's
shape is derived from the same (batch, prompt, past) triple, so the point is self-consistent
(attention_mask = past + prompt, position_ids = input_ids); TensorRT rejects a profile whose points
violate the graph's shape constraints ("kOPT values for profile 0 violate shape constraints").

Which profile range a dynamic dimension takes is read from the ONNX input's name and axis:
    input_ids, position_ids          (batch, prompt)
    attention_mask                    (batch, past + prompt)
    past_* / *.key / *.value, rank 4  (batch, heads, past, head_dim)
All other dimensions must be static in the graph. Runs everywhere (no TensorRT needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MinOptMax = tuple[int, int, int]
DEFAULT_LATENCY = (128, 64)  # eval.latency's default prompt and new_tokens (compress.plan.LatencyConfig)
Shape = tuple[int, ...]
POINTS = ("min", "opt", "max")

# Roles of the dynamic axes, per input name. "total" is past + prompt.
BATCH, PROMPT, PAST, TOTAL = "batch", "prompt", "past", "total"
TOKEN_INPUTS = ("input_ids", "position_ids")
MASK_INPUTS = ("attention_mask",)


class TensorRTProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch: MinOptMax = (1, 1, 1)
    prompt: MinOptMax = Field((1, 128, 512), description="tokens fed in one call (prefill; 1 when decoding)")
    past: MinOptMax = Field((0, 128, 1024), description="cached positions (KV cache length)")

    @model_validator(mode="after")
    def _ordered(self) -> "TensorRTProfile":
        for name in ("batch", "prompt", "past"):
            lo, opt, hi = getattr(self, name)
            if not (0 <= lo <= opt <= hi):
                raise ValueError(f"{name}: need 0 <= min <= opt <= max, got {(lo, opt, hi)}")
        if self.batch[0] < 1 or self.prompt[0] < 1:
            raise ValueError("batch and prompt minimums must be at least 1")
        return self

    def point(self, which: str) -> dict[str, int]:
        """{batch, prompt, past, total} at 'min', 'opt' or 'max'."""
        i = POINTS.index(which)
        b, p, k = self.batch[i], self.prompt[i], self.past[i]
        return {BATCH: b, PROMPT: p, PAST: k, TOTAL: k + p}


def profile_for(n_positions: int, seq_len: int | None = None, prompt: int = 128, new_tokens: int = 64,
                batch: int = 1) -> TensorRTProfile:
    """The profile that covers what the evaluation and generation do with this model, with every point
    (min, opt, max) inside the model's positions: past + prompt, the attention mask's length, is at most
    n_positions at the max point too (TensorRT checks each point against the graph).

    One profile cannot hold both the longest prefill and the longest decode (each alone can take the
    whole context), so the max point splits the context: prompt max P = the prefill the plan runs
    (seq_len: perplexity windows; prompt: the latency run), capped at max(prompt, n_positions / 4) and
    n_positions / 2, and past max = n_positions - P. Longer prompts are fed in chunks of P by the
    runner (export.trt_runner), so perplexity windows up to n_positions still run; decoding reaches
    n_positions - P + 1 positions (a profile given in the plan can trade the two differently).
    opt is the decode step (prompt 1) at the middle of the latency run: decode is the call repeated per
    token, so that is the shape TensorRT should pick its kernels for. Batches larger than max are split.
    """
    prefill = min(n_positions, max(prompt, seq_len or 1))
    longest = max(1, min(prefill, max(prompt, n_positions // 4), n_positions // 2))
    past_max = n_positions - longest
    past_opt = min(past_max, prompt + new_tokens // 2)
    return TensorRTProfile(batch=(1, batch, batch), prompt=(1, 1, longest), past=(0, past_opt, past_max))


def plan_profile(lat: Any, seq_len: int | None, n_positions: int) -> TensorRTProfile:
    """profile_for with the plan's eval.latency (a LatencyConfig) and perplexity window. Without latency
    settings the opt point is still a real decode: that of eval.latency's default prompt and length
    (128 + 64 tokens), not a 2-token context."""
    if lat is None:
        return profile_for(n_positions, seq_len, DEFAULT_LATENCY[0], DEFAULT_LATENCY[1])
    return profile_for(n_positions, seq_len, lat.prompt, lat.new_tokens, lat.batch)


def profile_problems(profile: TensorRTProfile, n_positions: int, seq_len: int | None = None,
                     prompt: int | None = None, new_tokens: int | None = None) -> list[str]:
    """What in a profile does not fit the model or the plan's evaluation; every point is checked."""
    out = []
    if profile.prompt[2] > n_positions:
        out.append(f"profile.prompt max {profile.prompt[2]} exceeds the model's {n_positions} positions")
    if profile.past[2] >= n_positions:
        out.append(f"profile.past max {profile.past[2]} leaves no room for a token in {n_positions} positions")
    for point in POINTS:
        p = profile.point(point)
        if p[TOTAL] > n_positions:
            out.append(f"profile {point} point (past {p[PAST]} + prompt {p[PROMPT]}) exceeds the model's "
                       f"{n_positions} positions: attention_mask would be {p[TOTAL]} long")
    if prompt is not None and new_tokens is not None and profile.past[2] < prompt + new_tokens - 1:
        out.append(f"profile.past max {profile.past[2]} < latency prompt + new_tokens - 1 "
                   f"({prompt + new_tokens - 1}): the latency run cannot decode to the end")
    if profile.past[0] > 0:
        out.append(f"profile.past min {profile.past[0]} > 0: a prefill (no cache yet) has past 0")
    if seq_len is not None and profile.past[2] + profile.prompt[2] < min(seq_len, n_positions):
        out.append(f"profile past max + prompt max ({profile.past[2]} + {profile.prompt[2]}) is too short for "
                   f"perplexity windows of {seq_len}")
    return out


# -- per-input shapes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """An ONNX graph input: name, dims (int = static, str = symbolic, None = unknown) and dtype name."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: str = "FLOAT"


def axis_roles(spec: InputSpec) -> tuple[str | None, ...] | None:
    """The profile role of each axis of an input, or None when the input is not one we know."""
    name, rank = spec.name, len(spec.dims)
    if name in TOKEN_INPUTS and rank == 2:
        return (BATCH, PROMPT)
    if name in MASK_INPUTS and rank == 2:
        return (BATCH, TOTAL)
    if rank == 4 and (name.startswith("past") or name.endswith((".key", ".value"))):
        return (BATCH, None, PAST, None)  # (B, nh, past, hs)
    return None


def shape_problems(spec: InputSpec, profile: TensorRTProfile | None) -> list[str]:
    """Why this input cannot be given min/opt/max shapes from the profile (empty when it can).
    Without a profile, only whether every dynamic dim has a role is checked."""
    roles = axis_roles(spec)
    dynamic = [d for d in spec.dims if not isinstance(d, int)]
    if roles is None:
        return [f"input {spec.name}: unknown input with dynamic dims {spec.dims}"] if dynamic else []
    out = []
    for axis, (dim, role) in enumerate(zip(spec.dims, roles)):
        if role is None and not isinstance(dim, int):
            out.append(f"input {spec.name} axis {axis}: dynamic ({dim}) but must be static (heads / head size)")
        elif role is not None and isinstance(dim, int) and profile is not None:
            values = {profile.point(p)[role] for p in POINTS}
            if values != {dim}:
                out.append(f"input {spec.name} axis {axis}: static {dim} in the graph but the profile's "
                           f"{role} range is {min(values)}..{max(values)} (export it as a dynamic axis)")
    return out


def input_shapes(specs: list[InputSpec], profile: TensorRTProfile) -> dict[str, dict[str, Shape]]:
    """{input name: {"min": shape, "opt": shape, "max": shape}} for every input with a dynamic dim.

    Raises ValueError listing every input that cannot be mapped (see shape_problems).
    """
    problems = [p for s in specs for p in shape_problems(s, profile)]
    if problems:
        raise ValueError("; ".join(problems))
    out = {}
    for spec in specs:
        roles = axis_roles(spec)
        if roles is None or all(isinstance(d, int) for d in spec.dims):
            continue  # fully static: TensorRT needs no profile entry
        out[spec.name] = {p: tuple(profile.point(p)[r] if r else int(d) for d, r in zip(spec.dims, roles))
                          for p in POINTS}
    return out


def shape_arg(shapes: dict[str, dict[str, Shape]], point: str) -> str:
    """'name:AxB,name2:CxD' for trtexec --minShapes/--optShapes/--maxShapes.

    trtexec splits on ':' and ','; a name containing ':' is wrapped in single quotes (which the
    shell script then escapes when it quotes the whole argument).
    """
    parts = []
    for name, points in shapes.items():
        label = f"'{name}'" if ":" in name else name
        parts.append(f"{label}:{'x'.join(str(d) for d in points[point])}")
    return ",".join(parts)


def trtexec_shape_flags(shapes: dict[str, dict[str, Shape]]) -> list[str]:
    """All three flags: trtexec treats a lone --optShapes as min = opt = max."""
    return [f"--{p}Shapes={shape_arg(shapes, p)}" for p in POINTS]
