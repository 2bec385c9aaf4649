"""The family -mean_t sg(w_t) * ce_t: gradient ascent with detached per-token weights (WGA, TNPO, WTNPO, SatImp).

Its gradient is mean_t w_t * grad(-ce_t), i.e. each token's GA gradient scaled by w_t; the weight function is
all that differs between the methods.
"""

from __future__ import annotations

from typing import Callable

import torch

from geffect.objectives.spec import ForgetTerms, LossContext
from geffect.objectives.tokens import TokenScores, score, to_label_grid

WeightFn = Callable[[LossContext, TokenScores], torch.Tensor]  # -> [B, T-1] weights (detached)


def weighted_ascent(weight_fn: WeightFn) -> Callable[[LossContext], ForgetTerms]:
    def compute(ctx: LossContext) -> ForgetTerms:
        scores = score(ctx.model, ctx.batch.forget)
        weights = weight_fn(ctx, scores).detach()
        loss = -scores.token_mean(weights * scores.ce)
        return ForgetTerms(loss=loss, risk=scores.risk(), token_weights=to_label_grid(weights, scores))

    return compute
