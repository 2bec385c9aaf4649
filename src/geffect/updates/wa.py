"""`wa` (weight averaging): the gradient is the plain one; what the run saves is the uniform average of the
weights after each of the last K optimizer steps (K default: the last fifth of the steps, at least 1). The
average is kept in float64 on the weights' device."""

from __future__ import annotations

import torch
from torch import nn

from geffect.options import at_least
from geffect.updates.base import Param, StepInputs, StepResult
from geffect.updates.plain import Plain


class WeightAveraging(Plain):
    name = "wa"
    help = "weight averaging: the run saves the mean of the weights over the last K steps"
    params = {"last": Param(0, "K, the steps averaged (0: the last fifth of the run)", kind=int, check=at_least(0))}
    distributed = False

    def setup(self, model: nn.Module, total_steps: int, seed: int) -> None:
        k = int(self.values["last"]) or max(1, total_steps // 5)
        self.first = max(1, total_steps - k + 1)
        self.sums: list[torch.Tensor] | None = None
        self.count = 0

    def compute(self, inputs: StepInputs) -> StepResult:
        return super().compute(inputs)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if step < self.first:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            if self.sums is None:
                self.sums = [p.detach().double().clone() for p in params]
            else:
                for acc, p in zip(self.sums, params):
                    acc.add_(p.detach().double())
        self.count += 1

    def before_save(self, model: nn.Module) -> None:
        if not self.count:
            return
        with torch.no_grad():
            for p, acc in zip([p for p in model.parameters() if p.requires_grad], self.sums):
                p.copy_((acc / self.count).to(p.dtype))

    def summary(self) -> dict:
        return {**super().summary(), "averaged_steps": self.count, "first_averaged_step": self.first}
