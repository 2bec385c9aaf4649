"""DPO / IdkDPO: refusal preferred, original answer rejected; summed log-probs; OpenUnlearning's 2/beta scale.

loss = -(2/beta) mean_i log sigmoid(beta * Delta_i),
Delta_i = [s_theta(rej) - s_ref(rej)] - [s_theta(win) - s_ref(win)]   (s = summed NLL).
Gradient: mean_i w_i * grad(s_theta(win_i) - s_theta(rej_i)) with w_i = 2 sigmoid(-beta Delta_i) (item weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geffect.objectives.idkpo import require_idk
from geffect.objectives.spec import ForgetMethod, ForgetTerms, HParam, LossContext, positive
from geffect.objectives.tokens import score, score_reference


def dpo(ctx: LossContext) -> ForgetTerms:
    beta = ctx.hparams["beta"]
    win_batch = require_idk(ctx)
    win, lose = score(ctx.model, win_batch), score(ctx.model, ctx.batch.forget)
    win_ref, lose_ref = score_reference(ctx.ref_model, win_batch), score_reference(ctx.ref_model, ctx.batch.forget)
    device = lose.ce.device
    lose_ratio = lose.sequence_nll() - lose_ref.sequence_nll().to(device)
    win_ratio = win.sequence_nll().to(device) - win_ref.sequence_nll().to(device)
    margin = lose_ratio - win_ratio
    loss = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
    weights = 2.0 * torch.sigmoid(-beta * margin.detach())
    return ForgetTerms(loss=loss, risk=lose.risk(), item_weights=weights)


DPO = ForgetMethod(
    name="DPO",
    compute=dpo,
    hparams={"beta": HParam(0.1, positive, "inverse temperature")},
    aliases=("IdkDPO",),
    needs_reference=True,
    needs_idk=True,
    weighted=True,
    summary="-(2/b) mean_i log sigmoid(b ((s-s_ref)(orig) - (s-s_ref)(idk)))",
)

# AltPO (Mekala et al. 2024): the same loss with a plausible alternate answer as the preferred one. OpenUnlearning
# (d3d7cf9, community/methods/AltPO/run.sh) runs its DPO trainer on QAwithAlternateDataset; the alternates come
# from `--alternates FILE` (community/methods/AltPO/generate.py's JSON Lines).
ALTPO = ForgetMethod(
    name="AltPO",
    compute=dpo,
    hparams={"beta": HParam(0.1, positive, "inverse temperature")},
    needs_reference=True,
    needs_idk=True,
    weighted=True,
    summary="-(2/b) mean_i log sigmoid(b ((s-s_ref)(orig) - (s-s_ref)(alternate)))",
)
