"""PDU (primal-dual unlearning, Entesari et al. 2025), as OpenUnlearning implements it.

OpenUnlearning d3d7cf9, src/trainer/unlearn/pdu.py (PDU.compute_loss, PDU.final_loss_value,
DualOptimizationCallback):
- forget loss: the squared gap between the largest and the mean logit, mean over the positions whose own label is
  valid (unshifted labels != -100, the logits at that same position);
- total: gamma * forget + lambda * (retain - retain_eps), with the NLL retain loss; lambda starts at alpha and,
  with `primal_dual`, after every call of the loss becomes max(0, lambda + dual_step_size * (retain - retain_eps)).

OpenUnlearning waits `dual_warmup_epochs` epochs before the first update; an objective does not see epochs, so
here the warm-up is `dual_warmup_calls` calls of the loss (micro-batches). lambda and the call count are the
objective's state (saved with checkpoints).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from geffect.objectives.spec import (
    ForgetMethod,
    ForgetTerms,
    HParam,
    LossContext,
    any_real,
    boolean,
    non_negative,
)
from geffect.objectives.tokens import forward_logits, score_logits, widen
from geffect.tokens import IGNORE_INDEX


def pdu_forget(ctx: LossContext) -> ForgetTerms:
    batch = ctx.batch.forget
    logits = forward_logits(ctx.model, batch)
    wide = widen(logits)
    gap = (wide.max(dim=-1).values - wide.mean(dim=-1)).pow(2)
    mask = (batch["labels"] != IGNORE_INDEX).to(gap.device)
    loss = (gap * mask).sum() / mask.sum().clamp(min=1)
    return ForgetTerms(loss=loss, risk=score_logits(logits, batch["labels"]).risk())


def init_dual(model: nn.Module, generator: torch.Generator, hparams: Mapping[str, float]) -> dict[str, torch.Tensor]:
    return {"calls": torch.zeros((), dtype=torch.float64)}


def dual_retain(ctx: LossContext, retain_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """lambda * (retain - eps) with the current lambda, then lambda's dual ascent step (final_loss_value)."""
    state, hp = ctx.state, ctx.hparams  # the objective's own dict: updated in place, saved with checkpoints
    state.setdefault("calls", torch.zeros((), dtype=torch.float64))  # type: ignore[attr-defined]
    state.setdefault("dual", torch.tensor(float(alpha), dtype=torch.float64))  # type: ignore[attr-defined]
    shifted = retain_loss - hp["retain_eps"]
    term = float(state["dual"]) * shifted
    if hp["primal_dual"] and float(state["calls"]) >= hp["dual_warmup_calls"]:
        value = max(0.0, float(state["dual"]) + hp["dual_step_size"] * float(shifted.detach()))
        state["dual"] = torch.tensor(value, dtype=torch.float64)  # type: ignore[index]
    state["calls"] = state["calls"] + 1  # type: ignore[index]
    return term


PDU = ForgetMethod(
    name="PDU",
    compute=pdu_forget,
    hparams={
        "retain_eps": HParam(0.0, any_real, "retain-loss level the dual variable aims at (OpenUnlearning: required)"),
        "dual_step_size": HParam(1.0, non_negative, "step size of lambda's dual ascent"),
        "primal_dual": HParam(1.0, boolean, "1: update lambda after every call; 0: fixed weight alpha"),
        "dual_warmup_calls": HParam(0.0, non_negative, "calls of the loss before lambda moves"),
    },
    default_retain="NLL",
    init_state=init_dual,
    dual_retain=dual_retain,
    summary="(max z - mean z)^2 on answer positions; lambda (R_retain - eps), lambda by dual ascent",
)
