"""The paper's smoothed (EMA) gradient estimator.

The paper's code keeps, for each of the objective gradient and the two risk gradients, an exponential
moving average over steps: the first value as is, then `ema = 0.6 * ema + 0.4 * new`, and reports the dot
product of the averages. Keeping these copies costs memory (one full gradient each); unlike the paper's code
(host memory, bf16) we keep them on the device in float32, so the smoothed G-effect is a device dot product.
The mini-batch and whole-set estimators need no copies (see engine.py): the dot product is linear in the risk.
"""

from __future__ import annotations

from typing import Sequence

import torch

from geffect.effects.dots import tensor_dots

ESTIMATORS = ("batch", "ema", "full")


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

    def dots(self, other: "GradientEma | Sequence[torch.Tensor | None]", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        right = other.values if isinstance(other, GradientEma) else other
        if self.values is None or right is None:
            raise RuntimeError("the moving average has no value yet; call update() first")
        return tensor_dots(self.values, right, dtype)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "values": self.values}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates, self.values = state["decay"], state["updates"], state["values"]
