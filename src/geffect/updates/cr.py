"""`cr` (curvature regularisation): forget term + lambda * ||grad l_f(theta + h v) - grad l_f(theta)||_2 with
v = g / ||g||, g = grad l_f(theta). As in CURE (Moosavi-Dezfooli et al.) the direction v is held constant
(stop-gradient); both gradients are differentiated through."""

from __future__ import annotations

import torch
from torch import nn

from geffect.objectives.base import UnlearnBatch
from geffect.options import non_negative, positive
from geffect.updates.base import Grads, Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import forget_term, gradient, write_grads
from geffect.updates.penalties import grad_norm, penalised_step


class _ObjectiveCall(nn.Module):
    """The objective as a module around the model, so that `torch.func.functional_call` can swap its weights."""

    def __init__(self, model: nn.Module, run):
        super().__init__()
        self.model = model
        self.run = run

    def forward(self):
        return self.run(self.model)


def forget_term_at(inputs: StepInputs, batch: UnlearnBatch, values: Grads) -> torch.Tensor:
    """The forget term of `batch` with the trainable weights replaced by `values` (differentiable in them)."""
    names = [name for name, p in inputs.model.named_parameters() if p.requires_grad]
    call = _ObjectiveCall(inputs.model, lambda model: inputs.objective(model, batch, inputs.ref_model))
    with inputs.accelerator.autocast():
        out = torch.func.functional_call(call, {f"model.{n}": v for n, v in zip(names, values)}, ())
    return forget_term(inputs, out)


class CurvatureRegularisation(UpdateRule):
    name = "cr"
    help = "curvature regularisation: + lambda * ||grad l_f(theta + h g/||g||) - grad l_f(theta)||"
    params = {
        "lambda": Param(0.1, "weight of the penalty", check=non_negative),
        "h": Param(0.01, "finite-difference step along the normalised forget gradient", check=positive),
    }

    def compute(self, inputs: StepInputs) -> StepResult:
        h = float(self.values["h"])

        def penalty(inputs: StepInputs, batch: UnlearnBatch, _forget, g_f: Grads) -> torch.Tensor:
            size = float(grad_norm([g.detach() for g in g_f]))
            step = h / size if size > 0 else 0.0
            moved = [p + step * g.detach() for p, g in zip(inputs.params, g_f)]
            g_moved = gradient(forget_term_at(inputs, batch, moved), inputs.params, create_graph=True)
            return grad_norm([a - b for a, b in zip(g_moved, g_f)])

        result, grads = penalised_step(inputs, self.values["lambda"], penalty)
        write_grads(inputs.params, grads)
        return result
