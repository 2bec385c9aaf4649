"""TNPO (token-wise NPO, Wang et al. 2025): w_t = 2 p_t^beta / (p_t^beta + p_ref,t^beta + eps).

With eps = 0 (the paper's equation, our default) it is written as 2 * sigmoid(-beta * (ce_t - ce_ref,t)), the same
number without overflow. The paper's code (tmlr-group/G-effect ef368ee, dataloader.py
CustomTrainerForgetting.compute_loss, loss_type tnpo) adds eps = 1e-5 to the denominator, which all but drops the
tokens both models find unlikely; `eps` reproduces it (preset `paper`).
"""

from __future__ import annotations

import torch

from geffect.objectives.spec import ForgetMethod, HParam, LossContext, non_negative, positive
from geffect.objectives.token_weighted import weighted_ascent
from geffect.objectives.tokens import TokenScores, score_reference

EPS = HParam(0.0, non_negative, "added to the weight's denominator (paper code: 1e-5; the paper's equation: 0)")


def tnpo_weights(ctx: LossContext, scores: TokenScores) -> torch.Tensor:
    ref = score_reference(ctx.ref_model, ctx.batch.forget)
    beta, eps = ctx.hparams["beta"], ctx.hparams.get("eps", 0.0)
    ce, ce_ref = scores.ce.detach(), ref.ce.to(scores.ce.device)
    if eps == 0:
        return 2.0 * torch.sigmoid(-beta * (ce - ce_ref))
    p_beta, p_ref_beta = torch.exp(-beta * ce), torch.exp(-beta * ce_ref)
    return 2.0 * p_beta / (p_beta + p_ref_beta + eps)


TNPO = ForgetMethod(
    name="TNPO",
    compute=weighted_ascent(tnpo_weights),
    hparams={"beta": HParam(4.0, positive, "NPO temperature, per token"), "eps": EPS},
    needs_reference=True,
    weighted=True,
    summary="-mean_t sg(2 p^b / (p^b + p_ref^b + eps)) ce_t",
)
