"""The small contracts behind the registry: hyper-parameters, the per-call context and each loss's result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from geffect.objectives.base import UnlearnBatch


@dataclass(frozen=True)
class HParam:
    """A method hyper-parameter: its default and the rule it must satisfy (`check` returns an error or None)."""

    default: float
    check: Callable[[float], str | None]
    help: str = ""


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def any_real(value: float) -> str | None:
    return None


def layer_index(value: float) -> str | None:
    if float(value).is_integer() and value >= -1:
        return None
    return "must be a layer index >= 0, or -1 for the default layer"


def boolean(value: float) -> str | None:
    return None if value in (0, 1) else "must be 0 or 1"


def check_finite(name: str, value: Any) -> str | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return f"{name} must be a number, got {value!r}"
    return None if math.isfinite(value) else f"{name} must be finite, got {value}"


@dataclass
class LossContext:
    """Everything one loss evaluation may read; `state` is the objective's per-run state (e.g. RMU's u)."""

    model: nn.Module
    batch: UnlearnBatch
    ref_model: nn.Module | None
    hparams: Mapping[str, float]
    state: Mapping[str, torch.Tensor]
    kl_mask: str = "answer"


@dataclass
class ForgetTerms:
    loss: torch.Tensor
    risk: torch.Tensor | None = None  # mean token NLL on batch.forget, attached; None if it did not run
    token_weights: torch.Tensor | None = None
    item_weights: torch.Tensor | None = None


@dataclass
class RetainTerms:
    loss: torch.Tensor
    risk: torch.Tensor | None = None


@dataclass(frozen=True)
class ForgetMethod:
    """One unlearning objective's forget loss, as the registry knows it."""

    name: str
    compute: Callable[[LossContext], ForgetTerms]
    hparams: Mapping[str, HParam] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    default_retain: str = "none"
    needs_reference: bool = False
    needs_idk: bool = False
    weighted: bool = False
    # Per-run state drawn once at setup (RMU's random direction): (model, generator, hparams) -> tensors.
    init_state: Callable[[nn.Module, torch.Generator, Mapping[str, float]], dict[str, torch.Tensor]] | None = None
    # A retain term whose weight is the objective's state (PDU's dual variable): (ctx, retain loss, alpha) -> the
    # weighted term to add; None: alpha * retain loss.
    dual_retain: Callable[[LossContext, torch.Tensor, float], torch.Tensor] | None = None
    summary: str = ""


@dataclass(frozen=True)
class RetainLoss:
    name: str
    compute: Callable[[LossContext], RetainTerms] | None  # None for "none"
    hparams: Mapping[str, HParam] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    needs_reference: bool = False
    summary: str = ""
