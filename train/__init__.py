"""Training: D_tr sampling, the collator, LoRA and pre-training through Ray Train."""
