"""LoRA adapters (peft) on every linear layer, as the unlearning runs use them."""

from __future__ import annotations

import torch


def with_lora(model: torch.nn.Module, rank: int, alpha: float | None = None) -> torch.nn.Module:
    """`model` wrapped with LoRA adapters of `rank` (alpha default 2 * rank) when `rank` > 0, else unchanged."""
    if rank == 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=0.0,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
