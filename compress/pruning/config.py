"""PruneConfig: the `prune` step's settings, and the plan-time check of its targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from compress.pruning.shapes import Shape, target_problems, target_shape
from compress.steps import StepConfig

if TYPE_CHECKING:
    from compress.plan import Plan

Criterion = Literal["magnitude", "taylor", "activation", "random"]
CALIBRATED: tuple[str, ...] = ("taylor", "activation")  # criteria that read calibration tokens


class PruneConfig(StepConfig):
    """Structured pruning to a smaller stock GPT-2: whole blocks, MLP channels, heads with n_embd.

        - prune: {importance: activation, layers: 1, mlp: 0.5, width: 0.25}
        - prune: {importance: taylor, params: 0.75}     # keep 3/4 of the parameters
    """

    kind: ClassVar[str] = "prune"

    importance: Criterion = Field("activation", description="how channels, heads and blocks are ranked")
    layers: int = Field(0, ge=0, le=1000, description="transformer blocks to drop")
    mlp: float = Field(0.0, ge=0, lt=1, description="fraction of MLP channels (n_inner) to remove")
    width: float = Field(0.0, ge=0, lt=1, description="fraction of attention heads to remove; n_embd "
                                                      "shrinks with them (head_dim is kept)")
    params: float | None = Field(None, gt=0, le=1, description="keep this fraction of the parameters; "
                                 "the step chooses width and mlp (see compress/pruning/shapes.py)")
    round_to: int = Field(64, ge=1, le=4096, description="a pruned n_inner is a multiple of this "
                          "(tensor cores, quantization groups); 1 keeps the exact count")
    calib_tokens: int = Field(16384, ge=64, le=100_000_000, description="calibration tokens (taylor, activation)")
    seq_len: int | None = Field(None, ge=8, le=8192, description="calibration window; default min(256, n_positions)")
    batch_size: int = Field(8, ge=1, le=1024, description="calibration windows per forward pass")
    seed: int = Field(0, ge=0, description="picks the calibration windows and the random criterion's scores")
    correct_layernorm: bool = Field(True, description="rescale LayerNorms for the removed residual channels "
                                    "(needs calibration tokens; see compress/pruning/compensation.py)")

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> "PruneConfig":
        if self.params is not None and (self.mlp or self.width):
            raise ValueError("params is exclusive with mlp and width (with params the step chooses them)")
        return self

    def prunes_nothing(self) -> bool:
        return self.layers == 0 and self.mlp == 0 and self.width == 0 and self.params in (None, 1)

    def plan_problems(self, plan: "Plan", index: int) -> list[str]:
        """Targets this step's input model cannot meet (width leaving no head, too many layers...)."""
        for j, earlier in enumerate(plan.steps[:index]):
            if earlier.kind == "quantize":
                return [f"prune needs a full-precision model: move it before steps[{j}].quantize"]
        problems = []
        if self.importance in CALIBRATED and plan.data.train is None:
            problems.append(f"importance={self.importance} calibrates on data.train: set data.train in the plan")
        shape = input_shape(plan, index)
        return problems if shape is None else problems + target_problems(shape, self)


def input_shape(plan: "Plan", index: int) -> Shape | None:
    """The shape of the model steps[index] receives, when the plan alone tells it.

    None for a hub id (not downloaded at plan time), after a problem in an earlier prune step, and
    after an earlier step other than prune that makes a torch model (e.g. distil into a student of
    another shape)."""
    shape = base_shape(plan)
    for earlier in plan.steps[:index]:
        if shape is None:
            return None
        if isinstance(earlier, PruneConfig):
            shape = None if target_problems(shape, earlier) else target_shape(shape, earlier)
        elif earlier.produces == "torch":
            return None
    return shape


def base_shape(plan: "Plan") -> Shape | None:
    from compress.models import is_local_source
    from compress.plan import PretrainModel, TrainTokenizer

    if isinstance(plan.model, PretrainModel):
        cfg = plan.model.pretrain
        tok = cfg.tokenizer if plan.tokenizer is None else None
        vocab = tok.vocab_size if isinstance(tok, TrainTokenizer) else None
        return Shape(n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                     n_inner=4 * cfg.n_embd, vocab_size=vocab, n_positions=cfg.n_positions)
    if is_local_source(plan.model):
        return Shape.of_config(json.loads((Path(plan.model) / "config.json").read_text()))
    return None  # a hub id: checked when the step loads it
