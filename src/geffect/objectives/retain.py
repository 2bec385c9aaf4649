"""Retain losses: none, NLL (GD), KL(pi_ref || pi_theta), and RMU's hidden-state MSE to pi_ref."""

from __future__ import annotations

import torch

from geffect.objectives.base import Batch
from geffect.objectives.hidden import activation_mse, hidden_for
from geffect.objectives.rmu import HIDDEN_STATES_INDEX, LAYER
from geffect.objectives.spec import LossContext, RetainLoss, RetainTerms
from geffect.objectives.tokens import forward_logits, score_logits, widen

KL_MASKS = ("answer", "all")


def retain_batch(ctx: LossContext) -> Batch:
    if ctx.batch.retain is None:
        raise ValueError("this objective's retain loss needs batch.retain")
    return ctx.batch.retain


def nll(ctx: LossContext) -> RetainTerms:
    batch = retain_batch(ctx)
    risk = score_logits(forward_logits(ctx.model, batch), batch["labels"]).risk()
    return RetainTerms(loss=risk, risk=risk)


def kl(ctx: LossContext) -> RetainTerms:
    """KL(pi_ref || pi_theta) per position, averaged over answer positions ("answer") or, as the reference
    code does, over every position of the unshifted logits, padding included ("all")."""
    batch = retain_batch(ctx)
    if ctx.ref_model is None:
        raise ValueError("the KL retain loss needs the frozen reference model: pass ref_model")
    logits = forward_logits(ctx.model, batch)
    with torch.no_grad():
        ref_logits = forward_logits(ctx.ref_model, batch)
    log_p = torch.log_softmax(widen(logits), dim=-1)
    log_ref = torch.log_softmax(widen(ref_logits).to(device=log_p.device, dtype=log_p.dtype), dim=-1)
    kl_per_position = (log_ref.exp() * (log_ref - log_p)).sum(dim=-1)  # [B, T]
    scores = score_logits(logits, batch["labels"])
    if ctx.kl_mask == "all":
        loss = kl_per_position.mean()
    else:
        loss = scores.token_mean(kl_per_position[:, :-1])
    return RetainTerms(loss=loss, risk=scores.risk())


def mse(ctx: LossContext) -> RetainTerms:
    batch = retain_batch(ctx)
    if ctx.ref_model is None:
        raise ValueError("the MSE retain loss needs the frozen reference model: pass ref_model")
    logits, hidden = hidden_for(ctx.model, batch, ctx.hparams)
    with torch.no_grad():
        _, ref_hidden = hidden_for(ctx.ref_model, batch, ctx.hparams)
    loss = activation_mse(hidden, ref_hidden.to(hidden.device), batch["labels"])
    return RetainTerms(loss=loss, risk=score_logits(logits, batch["labels"]).risk())


RETAIN_LOSSES = (
    RetainLoss(name="none", compute=None, summary="no retain term"),
    RetainLoss(name="NLL", compute=nll, aliases=("GD",), summary="R(retain)"),
    RetainLoss(name="KL", compute=kl, needs_reference=True, summary="KL(pi_ref || pi_theta) on retain"),
    RetainLoss(
        name="MSE",
        compute=mse,
        hparams={"layer": LAYER, "hidden_states_index": HIDDEN_STATES_INDEX},
        needs_reference=True,
        summary="hidden-state MSE to pi_ref",
    ),
)
