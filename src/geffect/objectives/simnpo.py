"""SimNPO (Fan et al. 2024): -(2/beta) mean_i log sigmoid(beta (s_theta(x_i) / T_i - delta)); no reference.

T_i = number of answer tokens of item i. Gradient: mean_i w_i * grad(-s_theta(x_i) / T_i) with
w_i = 2 sigmoid(-beta (s_theta / T_i - delta)), reported as the item weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, any_real, positive
from geffect.objectives.tokens import score


def simnpo(ctx: LossContext) -> ForgetTerms:
    beta, delta = ctx.hparams["beta"], ctx.hparams["delta"]
    scores = score(ctx.model, ctx.batch.forget)
    margin = scores.sequence_nll() / scores.sequence_lengths().clamp(min=1) - delta
    loss = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
    weights = 2.0 * torch.sigmoid(-beta * margin.detach())
    return ForgetTerms(loss=loss, risk=scores.risk(), item_weights=weights)


SIMNPO = ForgetMethod(
    name="SimNPO",
    compute=simnpo,
    hparams={
        "beta": HParam(4.5, positive, "inverse temperature"),
        "delta": HParam(0.0, any_real, "reward margin"),
    },
    weighted=True,
    summary="-(2/b) mean_i log sigmoid(b (s/T - delta))",
)
