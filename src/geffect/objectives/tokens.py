"""Per-token quantities shared by every objective: one forward, shifted CE in float32 or wider, risks.

Labels follow the HF convention (not shifted; -100 = ignored): the logits at position t predict the label at
t + 1. Everything here works on the shifted grid [B, T-1]; `to_label_grid` maps per-token values back onto
the [B, T] grid of the labels for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geffect.tokens import IGNORE_INDEX, Batch, shift_labels, token_cross_entropy, widen


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """Only what the model's forward takes; labels stay out so HF does not compute a second loss."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(**model_inputs(batch), use_cache=False).logits


@dataclass
class TokenScores:
    """Shifted per-token scores of one batch under one model.

    logits: [B, T-1, V] widened logits that predict the labels; labels: [B, T-1] shifted labels;
    mask: [B, T-1] bool, valid label positions; ce: [B, T-1] per-token CE, 0 at masked positions.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    ce: torch.Tensor

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.mask.sum()

    def risk(self) -> torch.Tensor:
        """Mean token NLL over all valid label tokens of the batch (HF `outputs.loss` semantics)."""
        return self.ce.sum() / self.n_tokens.clamp(min=1)

    def sequence_nll(self) -> torch.Tensor:
        """Per-item summed NLL s(x) = sum_t ce_t, shape [B]."""
        return self.ce.sum(dim=-1)

    def sequence_lengths(self) -> torch.Tensor:
        """Number of valid answer tokens per item, shape [B]."""
        return self.mask.sum(dim=-1)

    def token_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-token values over all valid answer tokens of the batch (masked positions ignored)."""
        return (values * self.mask).sum() / self.n_tokens.clamp(min=1)

    def probs(self) -> torch.Tensor:
        """Detached p_t = exp(-ce_t); 1 at masked positions (harmless: they are always masked out)."""
        return torch.exp(-self.ce.detach())


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> TokenScores:
    shift_logits = widen(logits[:, :-1, :])
    targets = shift_labels(labels).to(shift_logits.device)
    mask = targets != IGNORE_INDEX
    ce = token_cross_entropy(shift_logits, targets)
    return TokenScores(logits=shift_logits, labels=targets, mask=mask, ce=ce)


def score(model: nn.Module, batch: Batch) -> TokenScores:
    """One forward pass of `batch` through `model`, scored."""
    return score_logits(forward_logits(model, batch), batch["labels"])


def score_reference(ref_model: nn.Module | None, batch: Batch) -> TokenScores:
    """Scores under the frozen reference model, without building a graph."""
    if ref_model is None:
        raise ValueError("this objective needs the frozen reference model: pass ref_model")
    with torch.no_grad():
        return score(ref_model, batch)


def to_label_grid(values: torch.Tensor, scores: TokenScores) -> torch.Tensor:
    """Map detached per-token values from the shifted [B, T-1] grid onto the labels' [B, T] grid.

    Position 0 (never predicted) and every ignored position get 0.
    """
    values = (values.detach() * scores.mask).to(values.dtype)
    return F.pad(values, (1, 0), value=0.0)
