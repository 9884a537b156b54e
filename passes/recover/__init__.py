"""Post-training recovery passes: what the papers get from fine-tuning, without a training
framework."""
