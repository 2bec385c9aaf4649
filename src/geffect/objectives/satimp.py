"""SatImp: w_t = p_t^beta1 * (1 - p_t)^beta2 (OpenUnlearning defaults beta1 5, beta2 1)."""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, HParam, LossContext, non_negative
from geffect.objectives.token_weighted import weighted_ascent
from geffect.objectives.tokens import TokenScores


def satimp_weights(ctx: LossContext, scores: TokenScores) -> torch.Tensor:
    p = scores.probs()
    return p ** ctx.hparams["beta1"] * (1.0 - p) ** ctx.hparams["beta2"]


SATIMP = ForgetMethod(
    name="SatImp",
    compute=weighted_ascent(satimp_weights),
    hparams={
        "beta1": HParam(5.0, non_negative, "saturation exponent on p_t"),
        "beta2": HParam(1.0, non_negative, "importance exponent on 1 - p_t"),
    },
    weighted=True,
    summary="-mean_t sg(p^b1 (1-p)^b2) ce_t",
)
