"""`plain`: the objective's gradient as it is (the default): one backward per micro-batch, accumulated by
`accelerate`, the last micro-batch's graph kept for the callbacks that ask."""

from __future__ import annotations

from geffect.training.step_stats import StepStats
from geffect.updates.base import StepInputs, StepResult, UpdateRule
from geffect.updates.passes import objective_pass


class Plain(UpdateRule):
    name = "plain"
    help = "the objective's gradient (default)"
    keeps_graph = True
    distributed = True

    def compute(self, inputs: StepInputs) -> StepResult:
        stats, model = StepStats(), inputs.model
        out = batch = None
        for position, batch in enumerate(inputs.micro_batches):
            with inputs.accelerator.accumulate(model):
                out = objective_pass(inputs, batch, stats)
                last = position == len(inputs.micro_batches) - 1
                inputs.backward(out.loss, inputs.keep_graph and last)
        return StepResult(stats=stats, batch=batch, output=out)
