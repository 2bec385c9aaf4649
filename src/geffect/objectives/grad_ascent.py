"""GradAscent (GA): minimise -R(F). GradDiff (GD) is the same forget loss with the NLL retain loss by default."""

from __future__ import annotations

from geffect.objectives.spec import ForgetMethod, ForgetTerms, LossContext
from geffect.objectives.tokens import score


def grad_ascent(ctx: LossContext) -> ForgetTerms:
    risk = score(ctx.model, ctx.batch.forget).risk()
    return ForgetTerms(loss=-risk, risk=risk)


GRAD_ASCENT = ForgetMethod(name="GradAscent", compute=grad_ascent, aliases=("GA",), summary="-R(F)")
GRAD_DIFF = ForgetMethod(
    name="GradDiff", compute=grad_ascent, aliases=("GD",), default_retain="NLL", summary="-R(F) + alpha * R(retain)"
)
