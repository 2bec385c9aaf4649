"""TNPO (token-wise NPO, Wang et al. 2025): w_t = 2 p_t^beta / (p_t^beta + p_ref,t^beta).

Written as 2 * sigmoid(-beta * (ce_t - ce_ref,t)), which is the same number without overflow.
"""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, HParam, LossContext, positive
from geffect.objectives.token_weighted import weighted_ascent
from geffect.objectives.tokens import TokenScores, score_reference


def tnpo_weights(ctx: LossContext, scores: TokenScores) -> torch.Tensor:
    ref = score_reference(ctx.ref_model, ctx.batch.forget)
    return 2.0 * torch.sigmoid(-ctx.hparams["beta"] * (scores.ce.detach() - ref.ce.to(scores.ce.device)))


TNPO = ForgetMethod(
    name="TNPO",
    compute=weighted_ascent(tnpo_weights),
    hparams={"beta": HParam(4.0, positive, "NPO temperature, per token")},
    needs_reference=True,
    weighted=True,
    summary="-mean_t sg(2 p^b / (p^b + p_ref^b)) ce_t",
)
