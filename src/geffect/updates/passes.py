"""The passes update rules are built from: objective forwards with the step's statistics, gradients of parts of
the loss, sums of gradient lists, perturbed weights. Every gradient list is aligned with `StepInputs.params`
and dense (zeros where a parameter got no gradient)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Sequence

import torch
from torch import nn

from geffect.effects.tokens import math_attention
from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.objectives.tokens import score
from geffect.training.step_stats import StepStats
from geffect.updates.base import Grads, StepInputs


def objective_pass(inputs: StepInputs, batch: UnlearnBatch, stats: StepStats | None = None) -> LossOutput:
    """The objective on one micro-batch (autocast as the loop does), recorded in `stats` when given."""
    with inputs.accelerator.autocast():
        out = inputs.objective(inputs.model, batch, inputs.ref_model)
        if stats is not None:
            forget_risk = out.forget_risk
            if forget_risk is None:  # the objective did not score the original answers
                with torch.no_grad():
                    forget_risk = score(inputs.model, batch.forget).risk()
            stats.add(out, batch, forget_risk)
    return out


def forget_term(inputs: StepInputs, out: LossOutput) -> torch.Tensor:
    """gamma * forget loss: the part of the loss the smoothing rules act on."""
    return inputs.objective.config.gamma * out.forget_loss


def retain_term(inputs: StepInputs, out: LossOutput) -> torch.Tensor | None:
    """alpha * retain loss, or None without a retain term."""
    return None if out.retain_loss is None else inputs.objective.config.alpha * out.retain_loss


def gradient(
    loss: torch.Tensor | None, params: Sequence[nn.Parameter], retain_graph: bool = False, create_graph: bool = False
) -> Grads:
    """d loss / d params, dense; zeros for a None loss."""
    if loss is None:
        return [torch.zeros_like(p) for p in params]
    keep = retain_graph or create_graph  # a gradient with a graph needs the forward's saved tensors
    grads = torch.autograd.grad(loss, params, retain_graph=keep, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def combine(*terms: tuple[float, Grads]) -> Grads:
    """sum_k c_k * grads_k, tensor by tensor."""
    out = [torch.zeros_like(g) for g in terms[0][1]]
    for c, grads in terms:
        for acc, g in zip(out, grads):
            acc.add_(g.detach(), alpha=c)
    return out


def dot(a: Grads, b: Grads) -> torch.Tensor:
    """a . b over all tensors, in float64."""
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def norm(grads: Grads) -> torch.Tensor:
    """The global L2 norm over all tensors (float64)."""
    return dot(grads, grads).sqrt()


def write_grads(params: Sequence[nn.Parameter], grads: Grads) -> None:
    """What the optimizer will receive."""
    for p, g in zip(params, grads):
        p.grad = g.detach().to(p.dtype).clone()


def detached(out: LossOutput) -> LossOutput:
    """The output with every tensor cut from the graph (callbacks then run forwards of their own)."""
    return LossOutput(**{f.name: _cut(getattr(out, f.name)) for f in dataclasses.fields(out)})


def _cut(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def split_pass(inputs: StepInputs) -> tuple[Grads, Grads, StepStats, LossOutput]:
    """One pass over the step's micro-batches at theta: the mean gradients of the forget term and of the retain
    term (zeros without one), the step's statistics, and the last micro-batch's detached output."""
    params, stats, n = inputs.params, StepStats(), len(inputs.micro_batches)
    g_f, g_r = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    out = None
    for batch in inputs.micro_batches:
        out = objective_pass(inputs, batch, stats)
        retain = retain_term(inputs, out)
        for acc, g in zip(g_f, gradient(forget_term(inputs, out), params, retain_graph=retain is not None)):
            acc.add_(g, alpha=1.0 / n)
        if retain is not None:
            for acc, g in zip(g_r, gradient(retain, params)):
                acc.add_(g, alpha=1.0 / n)
        out = detached(out)
    return g_f, g_r, stats, out


def forget_gradient(inputs: StepInputs) -> Grads:
    """The mean gradient of the forget term over the step's micro-batches, at the current weights."""
    params, n = inputs.params, len(inputs.micro_batches)
    total = [torch.zeros_like(p) for p in params]
    for batch in inputs.micro_batches:
        out = objective_pass(inputs, batch)
        for acc, g in zip(total, gradient(forget_term(inputs, out), params)):
            acc.add_(g, alpha=1.0 / n)
    return total


@contextlib.contextmanager
def shifted(params: Sequence[nn.Parameter], delta: Grads) -> Iterator[None]:
    """The weights moved to theta + delta inside the block, restored bit for bit after it."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.add_(d.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)


def double_backward():
    """Attention kernels with second derivatives (the plain-math one) for the penalty rules."""
    return math_attention()
