"""WGA (Wang et al. 2025): w_t = p_t^beta. beta defaults to OpenUnlearning's 1 (the paper's code uses 5)."""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, HParam, LossContext, positive
from geffect.objectives.token_weighted import weighted_ascent
from geffect.objectives.tokens import TokenScores


def wga_weights(ctx: LossContext, scores: TokenScores) -> torch.Tensor:
    return scores.probs() ** ctx.hparams["beta"]


WGA = ForgetMethod(
    name="WGA",
    compute=weighted_ascent(wga_weights),
    hparams={"beta": HParam(1.0, positive, "weight exponent (OpenUnlearning 1; paper code 5)")},
    weighted=True,
    summary="-mean_t sg(p_t^beta) ce_t",
)
