"""Fine-tuning on the user's own text: full, or LoRA adapters (peft) merged back into a stock GPT-2."""

from compress.lazy import lazy_exports

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"FinetuneConfig": "compress.finetune.config", "FinetuneResult": "compress.finetune.loop",
         "LoraOptions": "compress.finetune.config", "run_finetune": "compress.finetune.loop"}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
