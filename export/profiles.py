"""TensorRT optimization profiles: (min, opt, max) of batch, prompt length and past length.

Computed once from the plan and written once, so the engine build, the trtexec command line and the
docs all use the same numbers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MinOptMax = tuple[int, int, int]


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
