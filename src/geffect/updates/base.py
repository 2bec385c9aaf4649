"""The contract of an update rule: it turns one optimizer step's micro-batches into the gradient in `p.grad`.

The unlearning loop hands a rule the step's micro-batches (`StepInputs`); the rule runs the objective (as many
passes as it needs), leaves in `p.grad` of every trainable parameter the gradient the optimizer will receive
(the mean over the step's micro-batches, as gradient accumulation gives), and returns a `StepResult`: the
step's logged numbers, the loss output and batch the callbacks see, the plain objective gradient where the
rule's gradient differs from it (the G-effect tracker logs that one's G-effects beside), and what the rule
did (logged under `update` in log.jsonl). Two more hooks: `after_optimizer_step` (weight averaging keeps its
running average there) and `before_save` (it puts the average into the weights the run saves).

Only `plain` keeps the step's graph for the callbacks; every other rule moves or perturbs the weights or
runs extra passes, so it hands the callbacks a detached output and the tracker runs forwards of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.training.step_stats import StepStats

Grads = list[torch.Tensor]


@dataclass(frozen=True)
class Param:
    """One `--update-param` of a rule: its default, its type and what is wrong with a value (or None)."""

    default: Any
    help: str
    kind: type = float
    check: Callable[[Any], "str | None"] | None = None
    choices: tuple[str, ...] | None = None


@dataclass
class StepInputs:
    model: nn.Module  # as the accelerator prepared it
    objective: Any  # geffect.objectives Objective
    ref_model: nn.Module | None
    micro_batches: list[UnlearnBatch]
    accelerator: Any
    backward: Callable[[torch.Tensor, bool], None]  # (loss, retain_graph): the loop's accumulate-aware backward
    keep_graph: bool  # a callback wants the last micro-batch's graph (plain only)
    step: int  # 1-based index of the optimizer step
    seed: int = 0

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order the optimizer holds them."""
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class StepResult:
    stats: StepStats
    batch: UnlearnBatch  # the step's last micro-batch
    output: LossOutput  # its loss output (detached unless the rule is plain)
    plain_grad: Grads | None = None  # the plain objective gradient (aligned with StepInputs.params) where it differs
    info: dict[str, float] = field(default_factory=dict)  # what the rule did this step (log.jsonl `update`)


class UpdateRule:
    """Base of every rule: `name`, its `params` (name -> Param) and `compute`; the hooks default to no-ops."""

    name: ClassVar[str]
    help: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    keeps_graph: ClassVar[bool] = False  # the callbacks may use the step's own graph (plain only)
    distributed: ClassVar[bool] = False  # works with several processes / sharded parameters

    def __init__(self, values: Mapping[str, Any]):
        self.values = dict(values)

    def setup(self, model: nn.Module, total_steps: int, seed: int) -> None:
        """Per-run state, before the first step."""

    def compute(self, inputs: StepInputs) -> StepResult:
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based) has changed the weights."""

    def before_save(self, model: nn.Module) -> None:
        """Before the run's final model is saved."""

    def summary(self) -> dict[str, Any]:
        """Run totals for summary.json (`update`)."""
        return {"name": self.name, "params": dict(self.values)}
