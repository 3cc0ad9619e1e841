"""Older plans' export quantizer keys -> the quantization method that does it now, and the one line saying so.

Until ONNX Runtime's quantizers became quantization methods (compress/quantization/ort_graph.py), the
ONNX export had its own: `export: {format: onnx, quantize: int4 | int8 | dynamic-int8, block_size,
smooth, allow_outliers}`. export.onnx_target.ExportConfig still reads these keys: it validates them
here as the QuantizeConfig of the method that replaces them, notes the new spelling at plan time and
in the run log, applies that method to the torch model in memory before the trace, and dumps the keys
back as written (so the step keeps the hash older versions gave it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from compress.quantization.config import QuantizeConfig

# The export's own quantizer of older plans -> the quantization method that does it now.
OLD_QUANTIZERS: dict[str, str] = {"int4": "ort-int4", "int8": "ort-int8", "dynamic-int8": "ort-dynamic-int8"}
# The older keys with the values the one ExportConfig of before dumped when they were not set.
OLD_DEFAULTS: dict[str, Any] = {"quantize": "none", "block_size": 128, "smooth": None, "allow_outliers": False}
OLD_KEYS = tuple(OLD_DEFAULTS)


def old_quantizer(old: dict[str, Any]) -> tuple["QuantizeConfig | None", str]:
    """An older plan's export quantizer keys -> (the QuantizeConfig that does it now, or None for none,
    and the one line naming the new spelling). ValueError (that line) when it cannot be mapped."""
    from compress.quantization.config import QuantizeConfig
    from compress.quantization.methods import method
    from compress.quantization.registry import Grid

    name = old.get("quantize", "none")
    if name != "none" and name not in OLD_QUANTIZERS:
        raise ValueError(f"quantize: {name!r} is not an export option any more; quantize before the export with "
                         f"method {' / '.join(OLD_QUANTIZERS.values())}")
    given = {k: v for k, v in old.items() if k != "quantize" and v != OLD_DEFAULTS[k]}
    if name == "none":
        options = [k for k in ("smooth", "allow_outliers") if k in given]
        if options:
            raise ValueError(f"{', '.join(options)}: options of method ort-dynamic-int8 now: "
                             f"`- quantize: {{method: ort-dynamic-int8, {options[0]}: {given[options[0]]}}}` "
                             "before the export")
        return None, f"{', '.join(old)}: the export quantizes no more (a quantize step before it does); remove them"
    body: dict[str, Any] = {"method": OLD_QUANTIZERS[name]}
    if method(body["method"]).grid is Grid.BLOCKS:  # MatMulNBits: the old block is the group
        body["group_size"] = old.get("block_size", OLD_DEFAULTS["block_size"])
    body |= {k: v for k, v in given.items() if k != "block_size"}
    spelled = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in body.items())
    line = f"quantize: {name} is now `- quantize: {{{spelled}}}` before the export"
    try:
        return QuantizeConfig.model_validate(body), line
    except ValidationError as e:
        raise ValueError(f"{line}, which is refused: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
