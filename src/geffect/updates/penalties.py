"""What `gp` and `cr` share: the step's gradient of forget term + lambda * penalty + retain term, where the
penalty depends on the forget term's gradient and is differentiated through (double backward), one
micro-batch at a time (the penalty of each micro-batch's forget gradient, averaged like the losses)."""

from __future__ import annotations

from typing import Callable

import torch

from geffect.objectives.base import UnlearnBatch
from geffect.training.step_stats import StepStats
from geffect.updates.base import Grads, StepInputs, StepResult
from geffect.updates.passes import (
    detached,
    double_backward,
    forget_term,
    gradient,
    objective_pass,
    retain_term,
)

# (inputs, micro-batch, forget term, its gradient with a graph) -> the penalty, attached
Penalty = Callable[[StepInputs, UnlearnBatch, torch.Tensor, Grads], torch.Tensor]


def penalised_step(inputs: StepInputs, weight: float, penalty: Penalty) -> tuple[StepResult, Grads]:
    """(the result with the plain gradient, the penalised gradient); `penalty` sees one micro-batch."""
    params, stats, n = inputs.params, StepStats(), len(inputs.micro_batches)
    total = [torch.zeros_like(p) for p in params]
    plain = [torch.zeros_like(p) for p in params]
    values = []
    out = None
    for batch in inputs.micro_batches:
        with double_backward():
            out = objective_pass(inputs, batch, stats)
            forget, retain = forget_term(inputs, out), retain_term(inputs, out)
            g_f = gradient(forget, params, retain_graph=True, create_graph=True)
            value = penalty(inputs, batch, forget, g_f)
            g_r = gradient(retain, params, retain_graph=True)
            loss = forget + weight * value + (retain if retain is not None else 0.0)
            grads = gradient(loss, params)
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=1.0 / n)
        for acc, a, b in zip(plain, g_f, g_r):
            acc.add_(a.detach() + b, alpha=1.0 / n)
        values.append(float(value.detach()))
        out = detached(out)
    info = {"penalty": sum(values) / len(values)}
    return StepResult(stats, inputs.micro_batches[-1], out, plain, info), total


def grad_norm(grads: Grads) -> torch.Tensor:
    """||grads||_2 over all tensors, differentiable (accumulated in float32 or wider)."""
    dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
    return torch.sqrt(sum((g.to(dtype) ** 2).sum() for g in grads))
