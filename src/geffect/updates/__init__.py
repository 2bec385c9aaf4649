"""Update rules: the seam between the objective (losses) and the optimizer (steps).

    rule = build_update("sam", {"rho": 0.01})
    rule.setup(model, total_steps, seed)
    result = rule.compute(StepInputs(...))     # leaves the step's gradient in p.grad
    optimizer.step(); rule.after_optimizer_step(model, step)
    rule.before_save(model)                    # weight averaging swaps its average in

One small module per rule (plain, sam, rs, gp, cr, wa, orthograd, ge-project), a registry (registry.py).
"""

from geffect.updates.base import Param, StepInputs, StepResult, UpdateRule
from geffect.updates.registry import RULES, build_update, get_update, resolve_params, update_names

__all__ = [
    "Param",
    "RULES",
    "StepInputs",
    "StepResult",
    "UpdateRule",
    "build_update",
    "get_update",
    "resolve_params",
    "update_names",
]
