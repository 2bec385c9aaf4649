"""UNDIAL (Dong et al. 2024): self-distillation towards softmax(z_ref - beta * onehot(y_t)).

Averaged over the valid answer tokens of the batch (DESIGN: answer positions), the method as intended.
OpenUnlearning (d3d7cf9, src/trainer/utils.py compute_undial_loss) averages over every position of the shifted
grid instead, padding and prompt included, where a -100 label indexes the vocabulary from the end (V - 100);
`all_positions` = 1 reproduces that (preset `openunlearning`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, boolean, positive
from geffect.objectives.tokens import score, score_reference


def undial(ctx: LossContext) -> ForgetTerms:
    scores = score(ctx.model, ctx.batch.forget)
    ref = score_reference(ctx.ref_model, ctx.batch.forget)
    ref_logits = ref.logits.to(device=scores.logits.device, dtype=scores.logits.dtype)
    vocab = ref_logits.shape[-1]
    all_positions = bool(ctx.hparams.get("all_positions", 0.0))
    # OpenUnlearning's index_put with label -100 wraps to V - 100; answer positions never see a -100 label.
    labels = scores.labels % vocab if all_positions else scores.labels.clamp(min=0)
    penalty = F.one_hot(labels, vocab).to(ref_logits.dtype) * ctx.hparams["beta"]
    target = torch.softmax(ref_logits - penalty, dim=-1)
    token_ce = -(target * torch.log_softmax(scores.logits, dim=-1)).sum(dim=-1)
    loss = token_ce.mean() if all_positions else scores.token_mean(token_ce)
    return ForgetTerms(loss=loss, risk=scores.risk())


UNDIAL = ForgetMethod(
    name="UNDIAL",
    compute=undial,
    hparams={
        "beta": HParam(10.0, positive, "logit penalty on the memorised token"),
        "all_positions": HParam(0.0, boolean, "1: average over every position, padding included (OpenUnlearning)"),
    },
    needs_reference=True,
    summary="CE(model, softmax(z_ref - b onehot(y)))",
)
