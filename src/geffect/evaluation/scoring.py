"""Batched teacher-forced passes: per-item answer log-likelihoods and the token statistics the metrics need.

Items are sorted by length before batching (less padding) and padded on the right; every statistic is per
item, so batching changes nothing but speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from geffect.data.collate import collate, encode_qa, pad_token_id
from geffect.data.templates import Template
from geffect.errors import UsageError
from geffect.models.answer_logits import answer_logits
from geffect.progress import progress
from geffect.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class TokenStats:
    """One item's answer under teacher forcing. Arrays run over answer tokens and the final EOS."""

    avg_nll: float
    token_logprobs: np.ndarray
    correct: np.ndarray  # argmax prediction == label
    zscores: np.ndarray | None  # (log p - mu) / sigma under the model's next-token distribution (Min-k++)

    @property
    def n_tokens(self) -> int:
        return len(self.token_logprobs)


def score_answers(
    model,
    tokenizer,
    template: Template,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    with_distribution: bool = False,
    max_length: int = 512,
    desc: str = "scoring",
) -> list[TokenStats]:
    """Teacher-forced statistics of each (question, answer) pair, in input order.

    `with_distribution` also computes the Min-k++ z-scores, which need a pass over the whole vocabulary.
    """
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    items = [
        encode_qa(tokenizer, template, q, a, index=i, max_length=max_length)
        for i, (q, a) in enumerate(zip(questions, answers))
    ]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    pad = pad_token_id(tokenizer)
    results: list[TokenStats | None] = [None] * len(items)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for rows in progress(batches, desc=desc):  # a bar on a terminal, plain lines in a log
        batch = collate([items[i] for i in rows], pad, padding_side="right")
        for row, stats in zip(rows, _score_batch(model, batch, with_distribution)):
            if not np.isfinite(stats.avg_nll):
                raise UsageError(f"the model's loss on item {row} ({desc}) is not finite; the model weights are broken")
            results[row] = stats
    return results  # type: ignore[return-value]


@torch.no_grad()
def _score_batch(model, batch: dict[str, torch.Tensor], with_distribution: bool) -> list[TokenStats]:
    device = next(model.parameters()).device
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    labels = batch["labels"].to(device)
    # Only the positions that predict answer tokens go through the vocabulary projection and the softmax:
    # the question's are never read, and for a small model they are a large share of the pass.
    logits, start = answer_logits(model, inputs, labels)
    # Accumulate in at least float32 whatever the model's dtype.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    labels = labels[:, start + 1 :]
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0)
    logprobs = torch.log_softmax(logits, dim=-1)
    target = logprobs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    correct = logits.argmax(dim=-1) == safe_labels
    zscores = None
    if with_distribution:
        probs = logprobs.exp()
        mu = (probs * logprobs).sum(-1)
        # Centred second moment: E[lp^2] - mu^2 cancels badly when the distribution is nearly flat.
        variance = (probs * (logprobs - mu.unsqueeze(-1)).square()).sum(-1)
        sigma = variance.clamp_min(1e-6).sqrt()
        zscores = (target - mu) / sigma
    out = []
    for row in range(labels.shape[0]):
        keep = mask[row]
        token_logprobs = target[row][keep].double().cpu().numpy()
        out.append(
            TokenStats(
                avg_nll=float(-token_logprobs.mean()) if len(token_logprobs) else float("nan"),
                token_logprobs=token_logprobs,
                correct=correct[row][keep].cpu().numpy(),
                zscores=None if zscores is None else zscores[row][keep].double().cpu().numpy(),
            )
        )
    return out
