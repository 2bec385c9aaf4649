"""The registry of objectives, their configuration, and the Objective the trainer calls.

Registry entries are explicit, immutable tuples: adding a method is one module plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn

from geffect.errors import UsageError
from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.objectives.ceu import CEU
from geffect.objectives.dpo import ALTPO, DPO
from geffect.objectives.grad_ascent import GRAD_ASCENT, GRAD_DIFF
from geffect.objectives.idkpo import IDKPO
from geffect.objectives.npo import NPO
from geffect.objectives.pdu import PDU
from geffect.objectives.presets import DEFAULT_PRESET, preset_defaults
from geffect.objectives.retain import KL_MASKS, RETAIN_LOSSES
from geffect.objectives.rmu import RMU
from geffect.objectives.satimp import SATIMP
from geffect.objectives.simnpo import SIMNPO
from geffect.objectives.spec import ForgetMethod, HParam, LossContext, RetainLoss, check_finite
from geffect.objectives.tnpo import TNPO
from geffect.objectives.undial import UNDIAL
from geffect.objectives.wga import WGA
from geffect.objectives.wtnpo import WTNPO

METHODS: tuple[ForgetMethod, ...] = (
    GRAD_ASCENT,
    GRAD_DIFF,
    NPO,
    SIMNPO,
    IDKPO,
    DPO,
    RMU,
    WGA,
    TNPO,
    WTNPO,
    SATIMP,
    UNDIAL,
    CEU,
    PDU,
    ALTPO,
)


def _index(entries) -> Mapping[str, object]:
    """Case-insensitive lookup by canonical name or alias."""
    table = {}
    for entry in entries:
        for key in (entry.name, *entry.aliases):
            table[key.lower()] = entry
    return MappingProxyType(table)


_METHOD_INDEX = _index(METHODS)
_RETAIN_INDEX = _index(RETAIN_LOSSES)


def method_names() -> list[str]:
    """Canonical method names, in registry order (aliases: see `method_aliases`)."""
    return [method.name for method in METHODS]


def method_aliases() -> dict[str, str]:
    """alias -> canonical name."""
    return {alias: method.name for method in METHODS for alias in method.aliases}


def retain_loss_names() -> list[str]:
    return [loss.name for loss in RETAIN_LOSSES]


def get_method(name: str) -> ForgetMethod:
    method = _METHOD_INDEX.get(str(name).strip().lower())
    if method is None:
        known = ", ".join(f"{m.name}" + (f" ({'/'.join(m.aliases)})" if m.aliases else "") for m in METHODS)
        raise UsageError(f"unknown unlearning method {name!r}; choose one of: {known}")
    return method


def get_retain_loss(name: str) -> RetainLoss:
    loss = _RETAIN_INDEX.get(str(name).strip().lower())
    if loss is None:
        raise UsageError(f"unknown retain loss {name!r}; choose one of: none, NLL (alias GD), KL, MSE")
    return loss


def parse_method_spec(spec: str) -> tuple[str, str | None]:
    """ "NPO+KL" -> ("NPO", "KL"); "GradDiff" -> ("GradDiff", None). The retain part is canonicalised
    ("npo+gd" -> ("npo", "NLL")); both names are checked against the registry."""
    parts = [part.strip() for part in str(spec).split("+")]
    if len(parts) > 2 or not all(parts):
        raise UsageError(f"bad method spec {spec!r}; write METHOD or METHOD+RETAIN, e.g. NPO or NPO+KL")
    get_method(parts[0])
    retain = get_retain_loss(parts[1]).name if len(parts) == 2 else None
    return parts[0], retain


@dataclass(frozen=True)
class ObjectiveConfig:
    """What a run asks for; None (and missing hyper-parameters) take the preset's defaults (objectives/presets.py).
    `build_objective` resolves every field, so an Objective's config holds the effective values."""

    method: str  # registry name or alias, e.g. "NPO", "GA"
    retain_loss: str | None = None  # None -> the preset's ("none" | "NLL" | "KL" | "MSE")
    gamma: float | None = None  # None -> the preset's (geffect: 1)
    alpha: float | None = None  # None -> the preset's (geffect: 1)
    hparams: Mapping[str, float] = field(default_factory=dict)  # missing ones take the preset's defaults
    kl_mask: str | None = None  # "answer" or "all" (the reference code's unmasked average); None -> the preset's
    preset: str = DEFAULT_PRESET


def objective_config(
    spec: str,
    retain_loss: str | None = None,
    gamma: float | None = None,
    alpha: float | None = None,
    hparams: Mapping[str, float] | None = None,
    kl_mask: str | None = None,
    preset: str = DEFAULT_PRESET,
) -> ObjectiveConfig:
    """The ObjectiveConfig of a method spec ("NPO" or "NPO+KL") with its settings; a retain loss named both in
    the spec and in `retain_loss` must be the same."""
    method, spec_retain = parse_method_spec(spec)
    if spec_retain is not None and retain_loss is not None and spec_retain.lower() != retain_loss.lower():
        raise UsageError(
            f"--method {spec} names retain loss {spec_retain} but --retain-loss is {retain_loss}; give one"
        )
    return ObjectiveConfig(
        method=method,
        retain_loss=retain_loss if retain_loss is not None else spec_retain,
        gamma=gamma,
        alpha=alpha,
        hparams=dict(hparams or {}),
        kl_mask=kl_mask,
        preset=preset,
    )


def _resolve_hparams(
    method: ForgetMethod, retain: RetainLoss, given: Mapping[str, float], preset: Mapping[str, float]
) -> dict[str, float]:
    specs: dict[str, HParam] = {**retain.hparams, **method.hparams}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        known = ", ".join(sorted(specs)) or "none"
        raise UsageError(
            f"unknown hyper-parameter {unknown[0]!r} for {method.name} with retain loss {retain.name}; known: {known}"
        )
    resolved = {}
    for name, spec in specs.items():
        value = given.get(name, preset.get(name, spec.default))
        error = check_finite(f"{method.name} {name}", value)
        if error:
            raise UsageError(error)
        value = float(value)
        error = spec.check(value)
        if error:
            raise UsageError(f"{method.name} {name}={value:g} {error}")
        resolved[name] = value
    return resolved


class Objective:
    """gamma * forget_loss + alpha * retain_loss for one method; callable on an UnlearnBatch."""

    def __init__(self, config: ObjectiveConfig, method: ForgetMethod, retain: RetainLoss):
        self.config = config
        self.name = method.name
        self.method = method
        self.retain = retain
        self.needs_reference = method.needs_reference or retain.needs_reference
        self.needs_idk = method.needs_idk
        self.needs_retain = retain.compute is not None
        self.weighted = method.weighted
        self._state: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Objective({self.config})"

    def setup(self, model: nn.Module, generator: torch.Generator) -> None:
        """Draw the per-run state (RMU's direction u) from `generator`; no-op for other methods."""
        if self.method.init_state is not None:
            self._state = self.method.init_state(model, generator, self.config.hparams)

    def state_dict(self) -> dict:
        return {name: tensor.clone() for name, tensor in self._state.items()}

    def load_state_dict(self, state: dict) -> None:
        if self.method.init_state is None:
            if state:
                raise ValueError(f"{self.name} has no per-run state, got keys {sorted(state)}")
            return
        self._state = {name: torch.as_tensor(value).clone() for name, value in state.items()}

    def __call__(self, model: nn.Module, batch: UnlearnBatch, ref_model: nn.Module | None = None) -> LossOutput:
        ctx = LossContext(
            model=model,
            batch=batch,
            ref_model=ref_model,
            hparams=self.config.hparams,
            state=self._state,
            kl_mask=self.config.kl_mask,
        )
        forget = self.method.compute(ctx)
        loss = self.config.gamma * forget.loss
        retain = self.retain.compute(ctx) if self.retain.compute is not None else None
        if retain is not None and self.method.dual_retain is not None:
            loss = loss + self.method.dual_retain(ctx, retain.loss.to(loss.device), self.config.alpha)
        elif retain is not None:
            loss = loss + self.config.alpha * retain.loss.to(loss.device)
        return LossOutput(
            loss=loss,
            forget_loss=forget.loss,
            retain_loss=None if retain is None else retain.loss,
            forget_risk=forget.risk,
            retain_risk=None if retain is None else retain.risk,
            token_weights=forget.token_weights,
            item_weights=forget.item_weights,
        )


def _given_or(value, default):
    return default if value is None else value


def build_objective(config: ObjectiveConfig) -> Objective:
    """Validate `config` (UsageError with one line on bad input) and build its Objective; every field the config
    leaves open takes its preset's default (objectives/presets.py)."""
    method = get_method(config.method)
    row = preset_defaults(config.preset, method.name)
    retain = get_retain_loss(_given_or(config.retain_loss, _given_or(row.retain_loss, method.default_retain)))
    gamma, alpha = (
        _given_or(config.gamma, _given_or(row.gamma, 1.0)),
        _given_or(config.alpha, _given_or(row.alpha, 1.0)),
    )
    for name, value in (("gamma", gamma), ("alpha", alpha)):
        error = check_finite(name, value)
        if error:
            raise UsageError(error)
    kl_mask = _given_or(config.kl_mask, _given_or(row.kl_mask, "answer"))
    if kl_mask not in KL_MASKS:
        raise UsageError(f"unknown kl_mask {kl_mask!r}; choose one of: {', '.join(KL_MASKS)}")
    hparams = _resolve_hparams(method, retain, dict(config.hparams or {}), row.hparams)
    resolved = ObjectiveConfig(
        method=method.name,
        retain_loss=retain.name,
        gamma=float(gamma),
        alpha=float(alpha),
        hparams=hparams,
        kl_mask=kl_mask,
        preset=config.preset,
    )
    return Objective(resolved, method, retain)
