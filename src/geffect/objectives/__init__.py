"""Unlearning objectives (DESIGN section 4): one small module per method, a registry, and the Objective API.

objective = build_objective(ObjectiveConfig(method="NPO", retain_loss="KL", hparams={"beta": 0.1}))
objective.setup(model, generator)          # per-run state (RMU's u)
out = objective(model, UnlearnBatch(forget=..., retain=...), ref_model)   # -> LossOutput
"""

from geffect.objectives.base import Batch, LossOutput, UnlearnBatch
from geffect.objectives.registry import (
    METHODS,
    Objective,
    ObjectiveConfig,
    build_objective,
    get_method,
    method_aliases,
    method_names,
    objective_config,
    parse_method_spec,
    retain_loss_names,
)

__all__ = [
    "Batch",
    "LossOutput",
    "METHODS",
    "Objective",
    "ObjectiveConfig",
    "UnlearnBatch",
    "build_objective",
    "get_method",
    "method_aliases",
    "method_names",
    "objective_config",
    "parse_method_spec",
    "retain_loss_names",
]
