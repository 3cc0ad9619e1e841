"""LowRankLinear and the checkpoint of a factorized GPT-2.

A factorized projection keeps GPT-2's Conv1D orientation: y = (x @ weight) @ up + bias with
weight [in, r] (stored under the original `...c_attn.weight` name), up [r, out], bias [out]. So
stock `GPT2LMHeadModel.from_pretrained` refuses the checkpoint with a size mismatch on that weight
(never loads random weights); the toolkit reads config.json's `gpt2_edge: {lowrank: {method, ranks}}`
entry (the rank of every factorized projection), builds the modules and loads the tensors strictly
(`load_factorized`). A top-level `gpt2_edge` entry also tells compress.models that the directory is not
a stock GPT-2 (its tensors are not checked against the stock shapes).

Quantizing a factorized model (rtn, gptq) first turns every LowRankLinear into a `LowRankPair` of two
nn.Linear factors, `<name>.down` [in -> r] and `<name>.up` [r -> out] (+ bias): the quantize step then
treats each factor as a projection of its own (its input width is `in` for down, the rank for up), and
the quantized checkpoint names them so (compress.quantization.storage rebuilds the pairs from the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_KEY, ENTRY = "gpt2_edge", "lowrank"  # config.json: {"gpt2_edge": {"lowrank": {...}}}


class LowRankLinear(nn.Module):
    """y = (x @ weight) @ up + bias: two matmuls of rank r (GPT-2 Conv1D orientation)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = nn.Parameter(torch.zeros(in_features, rank))  # first factor [in, r]
        self.up = nn.Parameter(torch.zeros(rank, out_features))  # second factor [r, out]
        self.bias = nn.Parameter(torch.zeros(out_features))

    @classmethod
    def of(cls, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        m = cls(down.shape[0], up.shape[1], down.shape[1])
        with torch.no_grad():
            m.weight.copy_(down)
            m.up.copy_(up)
            if bias is not None:
                m.bias.copy_(bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(x, self.weight), self.up) + self.bias

    def dense(self) -> torch.Tensor:
        """The product of the factors, [out, in] (nn.Linear orientation)."""
        return (self.weight @ self.up).t()

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.rank}->{self.out_features}"


class LowRankPair(nn.Module):
    """y = up(down(x)): a factorized projection as two linear layers, the form the quantize step takes
    (each child becomes a QuantLinear)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)  # weight [r, in]
        self.up = nn.Linear(rank, out_features)  # weight [out, r], the projection's bias

    @classmethod
    def of(cls, lr: LowRankLinear) -> "LowRankPair":
        pair = cls(lr.in_features, lr.out_features, lr.rank).to(lr.weight.device)
        with torch.no_grad():
            pair.down.weight.copy_(lr.weight.t())
            pair.up.weight.copy_(lr.up.t())
            pair.up.bias.copy_(lr.bias)
        return pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.rank}->{self.out_features}"


FACTORS = ("down", "up")  # the children of a LowRankPair, in the order data flows through them


def as_factor_pairs(model: nn.Module) -> dict[str, int]:
    """Every LowRankLinear of `model` becomes a LowRankPair (same function, in place); returns
    {module path: rank} of the pairs."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
    for name, m in found.items():
        set_module(model, name, LowRankPair.of(m))
    return {name: m.rank for name, m in found.items()}


def factor_pair_skeleton(model: nn.Module, ranks: dict[str, int]) -> None:
    """Put an (untrained) LowRankPair of each recorded rank where the factorize step put factors, so
    that a quantized factorized checkpoint's tensors load into it."""
    for name, rank in ranks.items():
        old = model.get_submodule(name)
        set_module(model, name, LowRankPair(old.weight.shape[0], old.weight.shape[1], int(rank)))


def lowrank_record(config: Any) -> dict[str, Any] | None:
    """The factorize step's record in a model config (GPT2Config or config.json dict), or None."""
    outer = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    value = outer.get(ENTRY) if isinstance(outer, dict) else None
    return value if isinstance(value, dict) else None


def set_lowrank_record(config: Any, record: dict[str, Any]) -> None:
    outer = dict(getattr(config, CONFIG_KEY, None) or {})
    setattr(config, CONFIG_KEY, outer | {ENTRY: record})


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def load_factorized(path: Path) -> nn.Module:
    """A checkpoint the factorize step saved (config.json names every rank), loaded exactly."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress.errors import UserError

    config = GPT2Config.from_pretrained(path, local_files_only=True)
    ranks = lowrank_record(config)["ranks"]
    model = GPT2LMHeadModel(config)
    for name, rank in ranks.items():
        old = model.get_submodule(name)
        set_module(model, name, LowRankLinear(old.weight.shape[0], old.weight.shape[1], int(rank)))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(f))
    if config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise UserError(f"{path}: the factorized weights do not match config.json's {CONFIG_KEY} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
