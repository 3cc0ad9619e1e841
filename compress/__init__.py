"""gpt2-edge: shrink a GPT-2 (prune, distil, quantize) and run plans of such steps."""

__version__ = "0.1.0"

from compress.distillation import DistillConfig, distill  # noqa: E402
from compress.pruning import PruneConfig, prune  # noqa: E402
from compress.quantization import QuantizeConfig, quantize  # noqa: E402
