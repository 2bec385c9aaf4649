"""`gp` (gradient penalty): forget term + lambda * ||grad forget term||_2, differentiated through (double
backward), so the penalty really shapes the gradient (the published code adds its value as a constant)."""

from __future__ import annotations

from geffect.options import non_negative
from geffect.updates.base import Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import write_grads
from geffect.updates.penalties import grad_norm, penalised_step


class GradientPenalty(UpdateRule):
    name = "gp"
    help = "gradient penalty: forget loss + lambda * ||grad forget loss||_2 (double backward)"
    params = {"lambda": Param(0.1, "weight of the penalty", check=non_negative)}

    def compute(self, inputs: StepInputs) -> StepResult:
        result, grads = penalised_step(inputs, self.values["lambda"], lambda _i, _b, _f, g_f: grad_norm(g_f))
        write_grads(inputs.params, grads)
        return result
