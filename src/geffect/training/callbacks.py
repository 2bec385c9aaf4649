"""The hook between the unlearning loop and observers such as the G-effect tracker.

The loop calls `after_backward` once per optimizer step, after the gradients of the full loss have been
accumulated in `p.grad` (unscaled, before clipping) and before `optimizer.step()`. A callback that wants to
reuse the step's forward passes sets `retain_graph = True`; the loop then keeps the graph of the step's last
micro-batch alive until the callback returns.

A callback whose settings change what a run writes names them: `settings_name` (a key of config.yaml's
`callbacks` section) and `settings()` (plain values). The trainer records them in config.yaml and, on
`--resume`, refuses settings that differ from the interrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.runfolder import RunFolder


@dataclass
class RunContext:
    folder: RunFolder
    model: torch.nn.Module  # unwrapped (accelerator.unwrap_model)
    accelerator: Any  # accelerate.Accelerator
    objective: Any  # geffect.objectives Objective
    ref_model: torch.nn.Module | None
    tokenizer: Any
    options: Any  # the run's UnlearnConfig
    template: Any  # the prompt Template the run encodes its items with
    total_steps: int
    start_step: int = 0  # > 0 when resuming

    @property
    def run_dir(self) -> Path:
        return self.folder.path


@dataclass
class StepContext:
    step: int  # 1-based index of the optimizer step about to be taken
    lr: float  # learning rate of this step
    batch: UnlearnBatch  # the step's last micro-batch
    loss_output: LossOutput  # for that micro-batch, graph kept alive if any callback asked
    extra: dict = field(default_factory=dict)


class StepCallback(Protocol):
    retain_graph: bool
    settings_name: str | None  # None: nothing to record

    def settings(self) -> dict: ...

    def on_train_begin(self, run: RunContext) -> None: ...

    def after_backward(self, run: RunContext, step: StepContext) -> None: ...

    def on_train_end(self, run: RunContext) -> None: ...
