"""`sam` (Fan et al., ICML 2025): sharpness-aware minimisation of the forget loss only.

    delta = rho * g_f / ||g_f||_2          (g_f: the step's forget-term gradient, global norm over all tensors)
    gradient = grad l_f(theta + delta) + grad (retain term)(theta)

Under gradient accumulation delta comes from the whole step's forget gradient and the second pass runs over
every micro-batch at theta + delta (the published code perturbs with the last micro-batch only).
"""

from __future__ import annotations

from geffect.options import positive
from geffect.updates.base import Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import combine, forget_gradient, norm, shifted, split_pass, write_grads


class Sam(UpdateRule):
    name = "sam"
    help = "SAM on the forget loss: its gradient at theta + rho * g_f / ||g_f||"
    params = {"rho": Param(0.01, "perturbation radius", check=positive)}

    def compute(self, inputs: StepInputs) -> StepResult:
        params = inputs.params
        g_f, g_r, stats, out = split_pass(inputs)
        size = float(norm(g_f))
        scale = self.values["rho"] / size if size > 0 else 0.0
        with shifted(params, [scale * g for g in g_f]):
            g_sharp = forget_gradient(inputs)
        write_grads(params, combine((1.0, g_sharp), (1.0, g_r)))
        return StepResult(
            stats, inputs.micro_batches[-1], out, combine((1.0, g_f), (1.0, g_r)), {"forget_grad_norm": size}
        )
