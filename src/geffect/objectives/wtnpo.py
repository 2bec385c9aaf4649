"""WTNPO (Wang et al. 2025): TNPO's weight times p_t^power.

The paper calls the exponent alpha; here it is `power`, because `alpha` is the retain-loss weight. `eps` as in TNPO:
the paper's code (G-effect ef368ee dataloader.py, loss_type wtnpo_*) computes
2 p^(beta + alpha) / (p^beta + p_ref^beta + 1e-5).
"""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, HParam, LossContext, non_negative, positive
from geffect.objectives.tnpo import EPS, tnpo_weights
from geffect.objectives.token_weighted import weighted_ascent
from geffect.objectives.tokens import TokenScores


def wtnpo_weights(ctx: LossContext, scores: TokenScores) -> torch.Tensor:
    return scores.probs() ** ctx.hparams["power"] * tnpo_weights(ctx, scores)


WTNPO = ForgetMethod(
    name="WTNPO",
    compute=weighted_ascent(wtnpo_weights),
    hparams={
        "beta": HParam(4.0, positive, "NPO temperature, per token"),
        "power": HParam(1.5, non_negative, "exponent of p_t (the paper's alpha)"),
        "eps": EPS,
    },
    needs_reference=True,
    weighted=True,
    summary="-mean_t sg(p^power * 2 p^b / (p^b + p_ref^b + eps)) ce_t",
)
