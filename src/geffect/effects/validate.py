"""First-order check of the G-effect: does -eta * e(D) predict the change of R(D) after one SGD step?

For theta' = theta - eta * grad L_u, R(D; theta') - R(D; theta) = -eta * e(D) + O(eta^2). The check takes the
objective as any `loss_fn(model) -> scalar`, measures both sides on each data set and reports the relative
error |predicted - measured| / |measured|. The model is restored exactly afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from geffect.effects.blocks import ParameterLayout, discover_layout
from geffect.effects.engine import Batch, gradient_effect, total_tokens
from geffect.effects.tokens import risk_terms


@dataclass
class FirstOrderResult:
    eta: float
    e: float  # G-effect e(D)
    risk_before: float
    risk_after: float
    predicted: float  # -eta * e
    measured: float  # risk_after - risk_before
    relative_error: float

    def to_json(self) -> dict:
        return asdict(self)


def set_risk(model: nn.Module, batches: Sequence[Batch]) -> float:
    """R(D): mean token NLL over all valid label tokens of the batches."""
    n = total_tokens(batches)
    device = next(model.parameters()).device
    with torch.no_grad():
        return sum(float(risk_terms(model, {k: v.to(device) for k, v in b.items()}, n)[0]) for b in batches)


def first_order_check(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    sets: Mapping[str, Sequence[Batch]],
    eta: float,
    layout: ParameterLayout | None = None,
) -> dict[str, FirstOrderResult]:
    """Compare -eta * e(D) with the measured change of R(D) after one SGD step along grad loss_fn, per set."""
    layout = layout or discover_layout(model)
    with torch.enable_grad():
        G = list(torch.autograd.grad(loss_fn(model), layout.params, allow_unused=True))
    effects = {name: gradient_effect(model, layout, batches, G) for name, batches in sets.items()}
    saved = [p.detach().clone() for p in layout.params]
    try:
        with torch.no_grad():
            for p, g in zip(layout.params, G):
                if g is not None:
                    p.sub_(g.to(p.dtype), alpha=eta)
            after = {name: set_risk(model, batches) for name, batches in sets.items()}
    finally:
        with torch.no_grad():
            for p, original in zip(layout.params, saved):
                p.copy_(original)
    results = {}
    for name, effect in effects.items():
        predicted = -eta * effect.total
        measured = after[name] - effect.risk
        error = abs(predicted - measured) / max(abs(measured), 1e-300)
        results[name] = FirstOrderResult(eta, effect.total, effect.risk, after[name], predicted, measured, error)
    return results
