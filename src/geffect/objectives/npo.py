"""NPO (Zhang et al. 2024): -(2/beta) mean_i log sigmoid(beta (s_theta(x_i) - s_ref(x_i))), s = summed NLL.

Gradient: mean_i w_i * grad(-s_theta(x_i)) with w_i = 2 sigmoid(-beta (s_theta - s_ref)) = 2 p^beta / (p^beta +
p_ref^beta), p = exp(-s); w_i is reported as the item weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, positive
from geffect.objectives.tokens import score, score_reference


def npo(ctx: LossContext) -> ForgetTerms:
    beta = ctx.hparams["beta"]
    scores = score(ctx.model, ctx.batch.forget)
    ref = score_reference(ctx.ref_model, ctx.batch.forget)
    margin = scores.sequence_nll() - ref.sequence_nll().to(scores.ce.device)
    loss = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
    weights = 2.0 * torch.sigmoid(-beta * margin.detach())
    return ForgetTerms(loss=loss, risk=scores.risk(), item_weights=weights)


NPO = ForgetMethod(
    name="NPO",
    compute=npo,
    hparams={"beta": HParam(0.1, positive, "inverse temperature (paper code 0.5)")},
    needs_reference=True,
    weighted=True,
    summary="-(2/b) mean_i log sigmoid(b (s - s_ref))",
)
