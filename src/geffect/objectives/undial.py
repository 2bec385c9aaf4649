"""UNDIAL (Dong et al. 2024): self-distillation towards softmax(z_ref - beta * onehot(y_t)).

Averaged over the valid answer tokens of the batch (DESIGN: answer positions). OpenUnlearning averages over
every position instead, with a -100 label indexing the vocabulary from the end; we do not copy that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, positive
from geffect.objectives.tokens import score, score_reference


def undial(ctx: LossContext) -> ForgetTerms:
    scores = score(ctx.model, ctx.batch.forget)
    ref = score_reference(ctx.ref_model, ctx.batch.forget)
    ref_logits = ref.logits.to(device=scores.logits.device, dtype=scores.logits.dtype)
    safe_labels = scores.labels.clamp(min=0)
    penalty = F.one_hot(safe_labels, ref_logits.shape[-1]).to(ref_logits.dtype) * ctx.hparams["beta"]
    target = torch.softmax(ref_logits - penalty, dim=-1)
    token_ce = -(target * torch.log_softmax(scores.logits, dim=-1)).sum(dim=-1)
    return ForgetTerms(loss=scores.token_mean(token_ce), risk=scores.risk())


UNDIAL = ForgetMethod(
    name="UNDIAL",
    compute=undial,
    hparams={"beta": HParam(10.0, positive, "logit penalty on the memorised token")},
    needs_reference=True,
    summary="CE(model, softmax(z_ref - b onehot(y)))",
)
