"""Fine-tuning on the user's own text: full, or LoRA adapters (peft) merged back into a stock GPT-2."""

from compress.finetune.config import FinetuneConfig, LoraOptions
from compress.finetune.loop import FinetuneResult, run_finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "LoraOptions", "run_finetune"]
