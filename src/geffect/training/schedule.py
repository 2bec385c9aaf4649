"""Learning-rate schedule: linear warm-up then linear decay to zero (the paper's, via transformers).

Unlearning and fine-tuning both build theirs with `build_scheduler`; they differ only in how the warm-up
length is given (epochs for unlearning, a fraction of all steps for fine-tuning).
"""

from __future__ import annotations

import torch


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up length in optimizer steps; the paper warms up over the first epoch (`warmup_epochs=1`)."""
    return min(total_steps, int(round(warmup_epochs * steps_per_epoch)))


def warmup_steps_of_ratio(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up length in optimizer steps as a fraction of the run (fine-tuning's `warmup_ratio`)."""
    return int(round(warmup_ratio * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LambdaLR with lr(t) = lr * t / warmup for t < warmup, then lr * (total - t) / (total - warmup).

    As in the HF Trainer that the reference code uses, optimizer step t (0-based) runs with lr(t), so the
    first step of a warmed-up run has lr 0.
    """
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
