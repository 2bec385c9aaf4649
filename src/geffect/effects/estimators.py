"""The estimators of a measured step's G-effects, chosen once by name from `ESTIMATOR_TYPES`.

- `batch`: the step's last micro-batch (and the next retain probe batch when the step has none), with the
  shortcuts `sides.plan_sides` allows: the linear form, replays of the step's own output gradients, the
  instance scatter;
- `ema`: as `batch`, plus the paper's smoothed gradients: for each of the objective gradient and the two
  risk gradients an exponential moving average over steps (the first value as is, then
  `ema = 0.6 * ema + 0.4 * new`), and the dot product of the averages. Unlike the paper's code (host memory,
  bf16) the copies stay on the device in float32 (three gradients of memory);
- `full`: the whole forget set and a fixed retain probe, with forwards of their own.
The mini-batch and whole-set estimators need no copies (see engine.py): the dot product is linear in the risk.
"""

from __future__ import annotations

from typing import Sequence

import torch

from geffect.effects.dots import Breakdown, tensor_dots
from geffect.effects.engine import SetEffect
from geffect.effects.records import forget_item_weights
from geffect.effects.scatter import forget_forward, objective_items
from geffect.effects.sides import StepMeasurement, Tools, linear_coefficients, measure_set, measure_sides, step_sides
from geffect.tokens import Batch


class GradientEma:
    """Exponential moving average of a gradient, tensor by tensor, in float32 on the gradient's device."""

    def __init__(self, decay: float = 0.6, dtype: torch.dtype = torch.float32):
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.decay = decay
        self.dtype = dtype
        self.values: list[torch.Tensor | None] | None = None
        self.updates = 0

    def update(self, grads: Sequence[torch.Tensor | None]) -> None:
        with torch.no_grad():
            if self.values is None:
                self.values = [None if g is None else g.detach().to(self.dtype, copy=True) for g in grads]
            else:
                for i, g in enumerate(grads):
                    if g is None:
                        if self.values[i] is not None:
                            self.values[i].mul_(self.decay)  # a missing gradient is a zero gradient
                        continue
                    if self.values[i] is None:
                        self.values[i] = torch.zeros_like(g, dtype=self.dtype)
                    self.values[i].mul_(self.decay).add_(g.detach().to(self.dtype), alpha=1.0 - self.decay)
        self.updates += 1

    def dots(
        self, other: "GradientEma | Sequence[torch.Tensor | None]", dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        right = other.values if isinstance(other, GradientEma) else other
        if self.values is None or right is None:
            raise RuntimeError("the moving average has no value yet; call update() first")
        return tensor_dots(self.values, right, dtype)


class Estimator:
    """Measures the G-effects of one step: `measure(step, G)` -> ({"u": SetEffect, "r": SetEffect}, extra),
    extra holding the record's `ema`, `weights` and `objective_items` where there are any."""

    name: str
    records_step = False  # per-item contributions come from the step's own forwards (a GhostRecorder)
    needs_forget_set = False  # the whole forget set, beside the retain probe
    restarts_on_resume = ""  # non-empty: what a resumed run loses (the estimator's state is not checkpointed)

    def __init__(
        self,
        tools: Tools,
        probe: list[Batch],
        forget: list[Batch] | None = None,
        coefficients: tuple[float | None, float | None] | None = None,
    ):
        self.tools = tools
        self.probe = probe
        self.forget = forget
        # (gamma, alpha) when G is exactly this micro-batch's gradient (grad_accum 1, one process), so that a
        # loss linear in the risks may be used (`linear_coefficients`); None otherwise
        self.coefficients = coefficients
        self._probe_cursor = 0

    def next_probe(self) -> Batch:
        """The retain probe's batches in turn, for steps without a retain batch."""
        probe = self.probe[self._probe_cursor % len(self.probe)]
        self._probe_cursor += 1
        return probe

    def measure(self, step, G: list[torch.Tensor | None]) -> tuple[dict[str, SetEffect], dict]:
        raise NotImplementedError

    @staticmethod
    def with_weights(step, extra: dict) -> dict:
        out = step.loss_output
        if out.item_weights is not None or out.token_weights is not None:
            extra["weights"] = forget_item_weights(out, step.batch.forget)
        return extra


class BatchEstimator(Estimator):
    name = "batch"
    records_step = True

    def measure(self, step, G):
        tools = self.tools
        linear = linear_coefficients(step.loss_output, *self.coefficients) if self.coefficients is not None else None
        sides = step_sides(step, self.next_probe, linear)
        extra: dict = {}
        if not tools.config.instances:
            return measure_sides(StepMeasurement(tools, G, linear), sides), self.with_weights(step, extra)
        forward = forget_forward(tools.recorder, sides["u"].batch, sides["r"].batch) if tools.config.scatter else None
        effects = measure_sides(
            StepMeasurement(tools, G, linear, itemise=True, want_gradient=forward is not None), sides
        )
        if forward is not None:
            items = objective_items(tools.recorder, forward, sides["u"].batch, effects, G, linear)
            if items is not None:
                extra["objective_items"] = items
        return effects, self.with_weights(step, extra)


class EmaEstimator(Estimator):
    name = "ema"
    restarts_on_resume = "the EMA estimator's smoothed gradients are not checkpointed: after --resume the 'ema' values restart from the resumed step"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema = {"G": GradientEma(), "u": GradientEma(), "r": GradientEma()}

    def measure(self, step, G):
        measurement = StepMeasurement(self.tools, G, keep={})
        effects = measure_sides(measurement, step_sides(step, self.next_probe, None))
        self.ema["G"].update(G)
        smoothed = {}
        for side in ("u", "r"):
            self.ema[side].update(measurement.keep[side])
            smoothed[f"e_{side}"] = Breakdown(self.ema[side].dots(self.ema["G"]).cpu(), self.tools.layout)
        return effects, self.with_weights(step, {"ema": smoothed})


class FullEstimator(Estimator):
    name = "full"
    needs_forget_set = True

    def measure(self, step, G):
        return {"u": measure_set(self.tools, self.forget, G), "r": measure_set(self.tools, self.probe, G)}, {}


ESTIMATOR_TYPES: dict[str, type[Estimator]] = {cls.name: cls for cls in (BatchEstimator, EmaEstimator, FullEstimator)}
ESTIMATORS = tuple(ESTIMATOR_TYPES)
