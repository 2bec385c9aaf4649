"""Training: the fine-tuning and unlearning loops, checkpoints and resume."""
