"""Training: D_tr sampling, the collator, LoRA through Ray Train, and evaluation."""
