"""What a run says before its first step: the learning-rate schedule and the size of its checkpoints.

A run with `--epochs 1` and the default one-epoch warm-up reaches its peak lr only at its very end, and a full
checkpoint of a 135M model (weights + AdamW's two moments) is about 1.6 GB; both surprised the first user of a
real model, so both are said up front.
"""

from __future__ import annotations

import torch


def describe_schedule(lr: float, warmup_steps: int, total_steps: int, steps_per_epoch: int) -> str:
    """One line: the steps, the warm-up, the peak and the decay (and the lr of each step of a short run)."""
    epochs = total_steps / max(steps_per_epoch, 1)
    text = f"lr schedule: {total_steps} optimizer steps ({epochs:.3g} epochs of {steps_per_epoch}); "
    if warmup_steps:
        text += f"linear warm-up over {warmup_steps} steps to the peak {lr:g}, then linear decay to 0"
    else:
        text += f"no warm-up: peak {lr:g} from the first step, then linear decay to 0"
    if total_steps <= 12:
        text += "; per step: " + ", ".join(f"{value:.3g}" for value in step_lrs(lr, warmup_steps, total_steps))
    if warmup_steps >= total_steps > 1:
        text += " (the warm-up spans the whole run, so the peak is never used: lower --warmup-epochs)"
    return text


def step_lrs(lr: float, warmup_steps: int, total_steps: int) -> list[float]:
    """The lr of each optimizer step, as `schedule.build_scheduler` gives it (step t runs with lr(t))."""
    values = []
    for t in range(total_steps):
        if t < warmup_steps:
            values.append(lr * t / max(1, warmup_steps))
        else:
            values.append(lr * max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps)))
    return values


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Approximate size of one checkpoint: every trainable weight once (tied ones once) plus AdamW's two
    float32 moments of each (frozen weights, a LoRA run's base model, are left out: geffect.training.checkpoint)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen or not parameter.requires_grad:
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel() * (parameter.element_size() + 2 * 4)
    return total


def describe_checkpoints(model: torch.nn.Module, save_every: int, keep: int, total_steps: int) -> str | None:
    """One line on the checkpoints this run will write, or None when it writes none."""
    if not save_every or save_every > total_steps:
        return None
    count = total_steps // save_every
    kept = count if keep == 0 else min(keep, count)
    size = checkpoint_bytes(model) / 1e9
    return (
        f"checkpoints: every {save_every} steps ({count} in all), about {size:.2f} GB each, the newest {kept} "
        f"kept ({kept * size:.2f} GB; --keep-checkpoints sets how many)"
    )
