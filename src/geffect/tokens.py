"""Token conventions shared by the whole package: the ignored label, the causal shift, token counts, per-token CE.

Labels follow the HF convention: not shifted, IGNORE_INDEX (-100) at prompt and padding positions; the logits
at position t predict the label at t + 1. The label tokens a loss is taken over are therefore `labels[:, 1:]`
that are not IGNORE_INDEX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (IGNORE_INDEX masked), index (item ids)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """The labels the logits at positions 0 .. T-2 predict: `labels[:, 1:]` ([B, T-1])."""
    return labels[:, 1:]


def valid_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of loss-bearing label tokens after the causal shift, as a 0-d tensor (no host sync)."""
    return (shift_labels(labels) != IGNORE_INDEX).sum()


def count_tokens(labels: torch.Tensor) -> int:
    """Number of loss-bearing label tokens after the causal shift."""
    return int(valid_tokens(labels))


def widen(x: torch.Tensor) -> torch.Tensor:
    """Cast to float32 unless already float32 or wider, so losses of bf16/fp16 models are computed exactly."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token CE [B, L] of logits [B, L, V] against aligned targets [B, L], in float32 or wider; 0 where the
    target is IGNORE_INDEX."""
    logits = widen(logits)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
