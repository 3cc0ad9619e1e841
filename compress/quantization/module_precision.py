"""Per-module precision of the `quantize` step: `overrides` maps module-name globs to a precision.

    - quantize: {method: gptq, bits: 4, group_size: 128,
                 overrides: {"h.0.*": {bits: 8}, "h.*.mlp.c_proj": {bits: 8, group_size: per-channel},
                             "h.5.attn.c_attn": {bits: 16}}}

Module names are block-relative: h.<i>.attn.c_attn, h.<i>.attn.c_proj, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj
and lm_head (the head; a tied head quantizes the tied table, as lm_head: int4 does). Patterns are
fnmatch globs, applied in order: a later key wins for the modules it matches. bits 16 keeps the
module in float (its fp32 weights are stored and exported as they are). This module is pure: the
search and the size accounting resolve a plan's precision per module without a model.
"""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The projections of one GPT-2 block, in the order data flows through them.
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
FLOAT_BITS = 16  # an override's bits that keep the module unquantized
HEAD = "lm_head"
# Patterns are checked against a model this deep when the plan does not know the shape yet (a pattern
# matching no name of any plausible GPT-2 is a typo whatever the model).
MAX_LAYERS = 128

Precision = tuple[int, "int | None"]  # (bits, input channels per scale; None: per channel or float)


class ModulePrecision(BaseModel):
    """The precision of the modules one pattern matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: Literal[4, 8, 16] = Field(description="weight bits (the method's bits), or 16: keep the module float")
    group_size: Literal[32, 64, 128, "per-channel"] | None = Field(
        None, description="input channels per scale; default: the step's group_size rule at these bits")


def module_names(n_layer: int) -> list[str]:
    """Every module an override can name, for a GPT-2 of n_layer blocks (block by block, then the head)."""
    return [f"h.{i}.{local}" for i in range(n_layer) for local in BLOCK_LINEARS] + [HEAD]


def relative_name(name: str) -> str:
    """'transformer.h.0.mlp.c_fc' (a torch module path) -> 'h.0.mlp.c_fc'; block-relative names as they are."""
    return name.removeprefix("transformer.")


def local_name(name: str) -> str:
    """'h.3.mlp.c_fc' -> 'mlp.c_fc' (the projection within its block); 'lm_head' as it is."""
    parts = relative_name(name).split(".")
    return ".".join(parts[2:]) if parts[0] == "h" else name


def matches(pattern: str, names: list[str]) -> list[str]:
    return [n for n in names if fnmatchcase(n, pattern)]


def deciding_pattern(overrides: dict[str, ModulePrecision] | None, name: str) -> str | None:
    """The last pattern matching `name` (the one that sets its precision), or None."""
    name = relative_name(name)
    last = None
    for pattern in overrides or {}:
        if fnmatchcase(name, pattern):
            last = pattern
    return last


def unmatched_problem(pattern: str, names: list[str], where: str) -> str:
    """One line for a pattern that matches no module of `names`, with the closest names."""
    block = re.match(r"h\.(\d+)\.", pattern)
    same_block = [n for n in names if block and n.startswith(block.group(0))]
    close = difflib.get_close_matches(pattern, same_block or names, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "; names are h.<i>.attn.c_attn, h.<i>.attn.c_proj, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj and lm_head"
    return f"pattern {pattern!r} matches no module of {where}{hint}"


def precision_label(bits: int, group: int | None) -> str:
    """(4, 128) -> 'int4 g128', (8, None) -> 'int8 per-channel', (16, None) -> 'float'."""
    if bits == FLOAT_BITS:
        return "float"
    return f"int{bits} " + (f"g{group}" if group else "per-channel")
