"""What a quantization method is: one `QuantMethod` entry per method, looked up by the config's
`method` (compress.quantization.methods holds the table).

An entry says everything the rest of the toolkit asks about a method — the bits it makes, what
`group_size` means for it, whether it calibrates, how it is stored and exported, which options it
reads — so no code outside the method's own module compares method names. This module only defines
the types (it imports no method), so storage and the exporters can read layouts without importing
the algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch

    from compress.lazy import LazyFunction
    from transformers import GPT2LMHeadModel

    from compress.quantization.config import QuantizeConfig


class Layout(str, Enum):
    """How a quantized model is written to disk (compress.quantization.storage switches on this)."""

    PACKED = "pack-quantized"  # compressed-tensors weight-only: packed int codes + group scales
    INT8 = "int-quantized"  # compressed-tensors int8 weights + a static per-tensor input scale (W8A8)
    INT8_DYNAMIC = "int-quantized-dynamic"  # int8 weights, activations quantized per call (torch.ao)
    BITSANDBYTES = "bitsandbytes"  # bitsandbytes' own state-dict serialization
    ONNX_GRAPH = "onnx-graph"  # fp32 weights (smoothing folded in): the ONNX export's graph pass quantizes

    @property
    def has_handoff(self) -> bool:
        """Whether the saved codes read back as hand-off records (LinearCodes) for the exporters."""
        return self in (Layout.PACKED, Layout.INT8)


class OnnxForm(str, Enum):
    """What the export step writes for the quantize step's method (export.onnx_quant.ORT_PASSES is
    keyed by it): the step's own integers, or ONNX Runtime's quantizer run on the exported graph."""

    MATMUL_NBITS = "MatMulNBits"  # weight-only: ORT MatMulNBits; TensorRT int4/int8 weight Q/DQ
    QDQ_W8A8 = "QDQ W8A8"  # Q/DQ of the activation and of the int8 weight (ORT and TensorRT int8)
    ORT_NBITS = "ORT MatMulNBits quantizer"  # ORT's blockwise RTN on the fp32 graph (every weight MatMul)
    ORT_DYNAMIC_INT8 = "ORT quantize_dynamic"  # ORT's MatMulInteger, activations per tensor per call

    @property
    def in_graph(self) -> bool:
        """ONNX Runtime quantizes the exported graph (the torch model stays fp32): only an ONNX Runtime
        export can write it, and it quantizes every weight MatMul, the LM head included."""
        return self in (OnnxForm.ORT_NBITS, OnnxForm.ORT_DYNAMIC_INT8)


class Grid(str, Enum):
    """What `group_size` means for a method."""

    GROUPS = "groups"  # our integer grid: groups of 32/64/128 input channels, or per channel
    PER_CHANNEL = "per-channel"  # our grid, one scale per output channel only
    OWN = "own"  # the library's own blocks (bitsandbytes, ORT dynamic): group_size must stay unset
    BLOCKS = "blocks"  # ORT MatMulNBits blocks of 16..256 input channels (a last partial block is padded)


# run(model, cfg, windows) -> the quantized model; windows: (N, T) calibration ids, or None when the
# method does not calibrate.
RunFn = Callable[["GPT2LMHeadModel", "QuantizeConfig", "torch.Tensor | None"], "GPT2LMHeadModel"]


class NoOptions(BaseModel):
    """A method without options of its own."""


@dataclass(frozen=True)
class QuantMethod:
    """One quantization method, as the config, the step, storage and the exporters see it."""

    name: str  # the plan's `method:` value
    bits: tuple[int, ...]  # weight bits it can make; the first is the default
    grid: Grid
    layout: Layout
    onnx: OnnxForm | None  # None: no ONNX form (a plan exporting it is refused)
    calibrates: bool  # reads calib_samples x calib_seq_len tokens of data.train
    run: LazyFunction  # a RunFn, imported on its first call (the table stays torch-free)
    # Fields of QuantizeConfig only this method reads (a pydantic model whose fields are mixed into
    # QuantizeConfig; setting one with another method is a plan error).
    options: type[BaseModel] = NoOptions
    asymmetric: bool = False  # accepts sym: false
    quantizes_head: bool = False  # accepts lm_head: int8 | int4
    per_module: bool = False  # accepts `overrides` (a precision per module: module_precision.py); its run
    #                           quantizes each module at cfg.precision_of(name)
    quantizes_factors: bool = False  # takes a factorized model (compress.lowrank): each factor a projection
    cpu_only: bool = False  # runs (and its model stays) on CPU
    requires: tuple[str, str] | None = None  # (module, pip extra) of an optional package it needs
    smooths: bool = False  # folds SmoothQuant factors into the model itself (the outlier check then skips
    #                        the inputs those factors divide: outlier_check.py)
    summary: str = ""  # one line for docs and --dry-run

    @property
    def exportable(self) -> bool:
        """Whether its integer codes are handed to the exporters (MatMulNBits / Q/DQ of its own codes;
        TensorRT and GGUF read them). Methods quantized in the ONNX graph are not: see `onnx`."""
        return self.onnx is not None and not self.onnx.in_graph

    @property
    def default_bits(self) -> int:
        return self.bits[0]

    @property
    def needs_calibration(self) -> bool:
        """Whether it reads calibration windows at all: to calibrate, or (int8 activations per tensor) to
        measure activation outliers first (outlier_check.py)."""
        return self.calibrates or self.int8_activations

    @property
    def int8_activations(self) -> bool:
        """Whether its activations are quantized to int8 per tensor (W8A8, dynamic int8): the methods
        that activation outliers hurt."""
        return self.layout in (Layout.INT8, Layout.INT8_DYNAMIC) or self.onnx is OnnxForm.ORT_DYNAMIC_INT8
