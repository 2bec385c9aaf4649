"""`rs` (randomized smoothing, Fan et al.'s kin of SAM): the forget gradient averaged over `samples` draws at
theta + eps, eps ~ N(0, sigma^2 I); the retain term's gradient at theta. The noise is drawn from the run's seed
and the step, so a run is reproducible."""

from __future__ import annotations

import torch

from geffect.options import at_least, positive
from geffect.updates.base import Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import combine, forget_gradient, shifted, split_pass, write_grads


class RandomizedSmoothing(UpdateRule):
    name = "rs"
    help = "randomized smoothing: the forget gradient averaged over n draws at theta + N(0, sigma^2)"
    params = {
        "samples": Param(3, "noise draws per step", kind=int, check=at_least(1)),
        "sigma": Param(1e-4, "noise standard deviation", check=positive),
    }

    def compute(self, inputs: StepInputs) -> StepResult:
        params = inputs.params
        g_f, g_r, stats, out = split_pass(inputs)
        generator = torch.Generator().manual_seed(inputs.seed * 1_000_003 + inputs.step)
        n, sigma = int(self.values["samples"]), float(self.values["sigma"])
        draws = []
        for _ in range(n):
            noise = [sigma * torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) for p in params]
            with shifted(params, noise):
                draws.append((1.0 / n, forget_gradient(inputs)))
        write_grads(params, combine(*draws, (1.0, g_r)))
        return StepResult(stats, inputs.micro_batches[-1], out, combine((1.0, g_f), (1.0, g_r)))
