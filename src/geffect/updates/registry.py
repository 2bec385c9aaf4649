"""The registry of update rules and their validated construction (one-line UsageErrors).

    rule = build_update("sam", {"rho": 0.05})

Adding a rule is one module plus one line in RULES.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from geffect.errors import UsageError
from geffect.updates.base import Param, UpdateRule
from geffect.updates.cr import CurvatureRegularisation
from geffect.updates.ge_project import GEffectProjection
from geffect.updates.gp import GradientPenalty
from geffect.updates.orthograd import OrthoGrad
from geffect.updates.plain import Plain
from geffect.updates.rs import RandomizedSmoothing
from geffect.updates.sam import Sam
from geffect.updates.wa import WeightAveraging

RULES: tuple[type[UpdateRule], ...] = (
    Plain,
    Sam,
    RandomizedSmoothing,
    GradientPenalty,
    CurvatureRegularisation,
    WeightAveraging,
    OrthoGrad,
    GEffectProjection,
)
UPDATE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)
_INDEX: Mapping[str, type[UpdateRule]] = MappingProxyType({rule.name: rule for rule in RULES})


def update_names() -> list[str]:
    return [rule.name for rule in RULES]


def get_update(name: str) -> type[UpdateRule]:
    rule = _INDEX.get(str(name).strip().lower())
    if rule is None:
        raise UsageError(f"unknown update rule {name!r}; choose one of: {', '.join(update_names())}")
    return rule


def _value(rule: str, key: str, spec: Param, value: Any) -> Any:
    """`value` converted to the parameter's kind and checked."""
    where = f"update {rule} {key}={value!r}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: must be true or false")
        return value
    if spec.kind is str:
        if spec.choices and value not in spec.choices:
            raise UsageError(f"{where}: choose one of {', '.join(spec.choices)}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: must be a number")
    if spec.kind is int and float(value) != int(value):
        raise UsageError(f"{where}: must be an integer")
    value = spec.kind(value)
    problem = spec.check(value) if spec.check is not None else None
    if problem or value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{where}: {problem or 'must be finite'}")
    return value


def resolve_params(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every parameter of rule `name`: the given ones checked, the others at their defaults."""
    rule = get_update(name)
    given = dict(given or {})
    unknown = sorted(set(given) - set(rule.params))
    if unknown:
        known = ", ".join(sorted(rule.params)) or "none"
        raise UsageError(f"unknown parameter {unknown[0]!r} for update rule {rule.name}; known: {known}")
    return {key: _value(rule.name, key, spec, given.get(key, spec.default)) for key, spec in rule.params.items()}


def build_update(name: str, params: Mapping[str, Any] | None = None) -> UpdateRule:
    """The rule `name` with its parameters (UsageError with one line on a bad name or value)."""
    return get_update(name)(resolve_params(name, params))
