"""Fine-tuning on the user's own text: full, or LoRA adapters (peft) merged back into a stock GPT-2."""
