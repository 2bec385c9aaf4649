"""CE-U (cross-entropy unlearning, Yang et al. 2025, arXiv:2503.01224), as OpenUnlearning implements it.

OpenUnlearning d3d7cf9, src/trainer/unlearn/ceu.py (`cross_entropy_unlearning_loss`, `compute_batch_ceu`): the
first `ignore_first_n` answer tokens of each item are dropped (the paper's footnote), then at every remaining
answer position the model's distribution is pulled towards its own detached distribution with the true token's
logit set to -inf: CE(softmax(sg(z) with z_y = -inf), log_softmax(z)), averaged over those positions.
"""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, non_negative
from geffect.objectives.tokens import forward_logits, score_logits, widen
from geffect.tokens import IGNORE_INDEX, shift_labels


def _drop_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    valid = labels != IGNORE_INDEX
    first = (valid.cumsum(dim=-1) <= n) & valid
    return labels.masked_fill(first, IGNORE_INDEX)


def ceu(ctx: LossContext) -> ForgetTerms:
    batch = ctx.batch.forget
    logits = forward_logits(ctx.model, batch)
    targets = shift_labels(_drop_first_answer_tokens(batch["labels"], int(ctx.hparams["ignore_first_n"])))
    targets = targets.to(logits.device)
    mask = targets != IGNORE_INDEX
    valid_logits = widen(logits[:, :-1, :])[mask]  # [N, V]
    suppressed = valid_logits.detach().clone()
    suppressed.scatter_(-1, targets[mask].unsqueeze(-1), float("-inf"))
    target_probs = torch.softmax(suppressed, dim=-1)
    # 0 * log_softmax where the target is 0 (the true token); the product is 0, never nan.
    token_ce = -(target_probs * torch.log_softmax(valid_logits, dim=-1)).sum(dim=-1)
    loss = token_ce.sum() / mask.sum().clamp(min=1)
    return ForgetTerms(loss=loss, risk=score_logits(logits, batch["labels"]).risk())


def _whole_count(value: float) -> str | None:
    return non_negative(value) or (None if float(value).is_integer() else "must be a whole number")


CEU = ForgetMethod(
    name="CEU",
    compute=ceu,
    hparams={"ignore_first_n": HParam(1.0, _whole_count, "answer tokens left out at the start of each item")},
    aliases=("CE-U",),
    summary="CE(softmax(sg(z), z_y=-inf), model) on answer tokens after the first n",
)
