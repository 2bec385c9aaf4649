"""The options of in-run G-effect tracking (`geffect unlearn --track-geffect ...`, a study's `geffect:`)."""

from __future__ import annotations

from dataclasses import dataclass

from geffect.effects.estimators import ESTIMATORS
from geffect.options import at_least, check, non_negative, option


@dataclass(frozen=True)
class TrackerConfig:
    """Every option of the G-effect tracker. Per-token contributions and the instance scatter are built on
        the per-item ones, so `tokens` or `scatter` switch `instances` on. Whether to track at all is the
    command line's `--track-geffect` and a study's `geffect.enabled`."""

    CLI_PREFIX = "geffect-"

    every: int = option(1, "measure every K-th optimizer step", check=at_least(1), metavar="K")
    estimator: str = option(
        "batch",
        "batch (step's mini-batch), ema (paper's smoothed gradients), full (whole forget set and retain probe)",
        choices=ESTIMATORS,
    )
    instances: bool = option(False, "per-item contributions (ghost dot products)")
    scatter: bool = option(
        False,
        "the paper's instance scatter: each forget item's part of the objective gradient "
        "against both risks (implies instances; two more passes over the forget batch)",
    )
    tokens: bool = option(False, "per-token contributions (one forward-mode pass per side; implies instances)")
    tensors: bool = option(False, "per-tensor breakdown in every line")
    applied: bool = option(
        False,
        "also log u = grad R . (theta_t - theta_t+1) / lr, the G-effect of the update the optimizer applied, "
        "and its prediction -sum lr u (one more backward per side)",
    )
    probe_size: int = option(
        32,
        "retain probe items (full estimator; batch estimator when the step has no retain batch)",
        check=at_least(1),
        metavar="N",
    )
    probe_batch_size: int = option(
        8, "items per forward of the retain probe and of the full estimator's sets", check=at_least(1), metavar="N"
    )
    # With the one streamed tensor gradient beside them, the tracker's extra memory stays near one copy.
    activation_budget: float = option(
        0.75,
        "activations the tracker's own forwards (GA's retain probe, the full "
        "estimator) may keep, in gradient copies: larger batches run in micro-batches "
        "(0 = no limit)",
        check=non_negative,
        metavar="X",
    )

    def __post_init__(self) -> None:
        if self.tokens or self.scatter:
            object.__setattr__(self, "instances", True)

    def validate(self) -> None:
        check(self)
