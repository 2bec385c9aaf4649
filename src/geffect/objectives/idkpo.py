"""IdkPO ("PO" in Wang et al.): the NLL of a refusal answer given the forget question (batch.forget_idk).

The forget batch with its original answers is not run, so no forget risk is reported.
"""

from __future__ import annotations

from geffect.objectives.spec import ForgetMethod, ForgetTerms, LossContext
from geffect.objectives.tokens import score


def require_idk(ctx: LossContext):
    if ctx.batch.forget_idk is None:
        raise ValueError("this objective needs batch.forget_idk (the forget questions with refusal answers)")
    return ctx.batch.forget_idk


def idk_po(ctx: LossContext) -> ForgetTerms:
    return ForgetTerms(loss=score(ctx.model, require_idk(ctx)).risk())


IDKPO = ForgetMethod(
    name="IdkPO", compute=idk_po, aliases=("PO",), needs_idk=True, summary="R(forget questions, refusal answers)"
)
