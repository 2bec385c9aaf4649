"""Logits of the positions that predict answer tokens only.

Every loss in this package is over the answer tokens (labels != -100) of right-padded batches. For a small
model the vocabulary projection of the prompt positions is a large share of a forward and, with its
log-softmax kept for the backward, of the activation memory; `logits_to_keep` (transformers' argument of
every causal LM head) skips it.
"""

from __future__ import annotations

import inspect

import torch

from geffect.tokens import IGNORE_INDEX


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def first_scored_position(labels: torch.Tensor) -> int:
    """The position whose logits predict the batch's first label token (0 when a row has no label)."""
    return max(int((labels != IGNORE_INDEX).int().argmax(1).min()) - 1, 0)


def answer_logits(model: torch.nn.Module, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(logits [B, T-1-start, V], start): `logits[:, k]` predicts `labels[:, start + k + 1]`, so the logits
    line up with `labels[:, start + 1:]`. start is 0 for a model whose forward cannot skip positions."""
    length = labels.shape[1]
    start = first_scored_position(labels) if accepts_logits_to_keep(model) else 0
    if start == 0:
        return model(**inputs).logits[:, : length - 1], 0
    keep = torch.arange(start, length - 1, device=labels.device)
    return model(**inputs, logits_to_keep=keep).logits, start
