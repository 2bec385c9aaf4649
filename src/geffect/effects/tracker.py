"""In-run G-effect tracking: a StepCallback that appends one record per measured step to RUN/geffect.jsonl.

After the step's backward, `p.grad` holds G = grad L_u (the full loss). For each side (u: the forget batch,
r: the retain batch, or a fixed retain probe when the step has none) the tracker computes e = grad R . G.
The estimator (`estimators.py`: `batch`, `ema`, `full`, chosen once by name) picks the sets; the ways of
measuring a side (algebra from G when the loss is linear in the risks, replays of the output gradients the
step's own backward left, ghost backwards, streamed dots, plain autograd) and the one plan choosing among
them are in `sides.py`; the distributed reduction in `reduce.py`; the record in `records.py`. The tracker
keeps the life cycle: the layout and the files at the start, arming the ghost recorder on the steps to
measure, the measurement after each such step's backward, the hooks' removal at the end.
Format: docs/geffect-format.md.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Sequence

import torch

from geffect.effects.applied import BesideEffects, applied_sets
from geffect.effects.blocks import ParameterLayout, discover_layout
from geffect.effects.budget import ActivationBudget
from geffect.effects.config import TrackerConfig
from geffect.effects.dots import all_reduce_max, detect_reduce_mode, param_grads
from geffect.effects.estimators import ESTIMATOR_TYPES, Estimator
from geffect.effects.exactness import StepGuard, measurement_step, refuse_inexact_split
from geffect.effects.ghost import GhostRecorder
from geffect.effects.probe import default_sets
from geffect.effects.records import PredictedChange, effect_record, layout_record
from geffect.effects.reduce import reduce_step
from geffect.effects.sides import Tools
from geffect.errors import UsageError
from geffect.options import fields, flag_of
from geffect.runfolder import RunFolder
from geffect.tokens import Batch

__all__ = ["GEffectTracker", "TrackerConfig"]


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers renamed the attribute."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            return bool(getattr(model, name))
        except AttributeError:
            continue
    return False


class GEffectTracker:
    """StepCallback measuring the unlearning and retaining G-effects in-run (see module docstring)."""

    retain_graph = True
    settings_name = "geffect_tracking"  # the section of config.yaml holding settings(), checked on resume

    def __init__(
        self,
        config: TrackerConfig = TrackerConfig(),
        forget_batches: Sequence[Batch] | None = None,
        probe_batches: Sequence[Batch] | None = None,
    ):
        config.validate()
        self.config = config
        self.estimator_type: type[Estimator] = ESTIMATOR_TYPES[config.estimator]
        self.forget_batches = list(forget_batches) if forget_batches is not None else None
        self.probe_batches = list(probe_batches) if probe_batches is not None else None
        self.layout: ParameterLayout | None = None
        self.recorder: GhostRecorder | None = None
        self.estimator: Estimator | None = None
        self.folder: RunFolder | None = None
        self.predicted = PredictedChange()
        self.beside: BesideEffects | None = None  # `plain` and `applied` (u) in each line, see effects/applied.py
        self._pending: dict | None = None  # the measured step's line, written once the optimizer has stepped
        self._handles: list = []
        self._main = True
        self._reduce = "none"
        self._busy = False  # inside after_backward: the tracker's own forwards must not drop the step's captures
        self.guard = StepGuard()  # per-item values checked against plain gradients on the first measured step

    def settings(self) -> dict:
        """The options as `geffect unlearn` spells them (`geffect_every`, ...), so a run can be rerun as it was."""
        return {
            "track_geffect": True,
            **{
                flag_of(TrackerConfig, f)[2:].replace("-", "_"): getattr(self.config, f.name)
                for f in fields(TrackerConfig)
            },
        }

    # -- lifecycle -----------------------------------------------------------------------------------------
    def on_train_begin(self, run) -> None:
        model, accelerator = run.model, run.accelerator
        self.layout = layout = discover_layout(model)
        self._reduce = detect_reduce_mode(model)
        gradient_bytes = sum(p.numel() * p.element_size() for p in layout.params)
        agree = None if self._reduce == "none" else functools.partial(all_reduce_max, device=self._device())
        budget = ActivationBudget(self.config.activation_budget * gradient_bytes, layout.params, agree)
        world = getattr(accelerator, "num_processes", 1)
        self._main = getattr(accelerator, "is_main_process", True)
        # G is exactly the measured micro-batch's gradient only with one micro-batch per step on one process.
        grad_accum = run.options.grad_accum if run.options is not None else 1
        # ... and only when the update rule hands the optimizer the objective's own gradient (geffect.updates).
        linear_ok = int(grad_accum) == 1 and world == 1 and getattr(run.options, "update", "plain") == "plain"
        self.beside = BesideEffects(layout, self.config.applied, self.config.tensors)
        self.folder = run.folder
        if self._main:
            kept = self.folder.keep_geffect_until(run.start_step)
            self.predicted.restore(kept)
            self.beside.restore(kept)
            self.folder.write_layout(layout_record(layout, dataclasses.asdict(self.config)))
        if run.start_step and self.estimator_type.restarts_on_resume:
            logging.getLogger(__name__).warning(self.estimator_type.restarts_on_resume)
        self._default_sets(run)
        # Per-tensor dots streamed out of the backward need a plain model: one process, parameters not sharded.
        tools = Tools(model, layout, self.config, budget, streamable=self._reduce == "none" and world == 1)
        if self.config.instances and _checkpointing(model):
            # recomputed forwards inside the backward would be captured twice
            raise UsageError("--geffect-instances does not work with gradient checkpointing; turn one of them off")
        if self.config.instances and self.estimator_type.records_step:
            self.recorder = tools.recorder = GhostRecorder(model, layout)
            # When the loss is linear in the risks, the step's own backward already brings each forward the
            # output gradients a ghost backward would compute (times the coefficient): keep them (memory of
            # the order of the activations, on measured steps only).
            self.recorder.keep_deltas = linear_ok
            # A new forward means the previous micro-batch is finished: drop its captures (memory).
            self._handles.append(model.register_forward_pre_hook(self._before_forward))
            self._arm(run.start_step + 1)
        objective_config = getattr(getattr(run, "objective", None), "config", None)
        coefficients = (
            (getattr(objective_config, "gamma", None), getattr(objective_config, "alpha", None)) if linear_ok else None
        )
        self.estimator = self.estimator_type(tools, self.probe_batches, self.forget_batches, coefficients)

    def _default_sets(self, run) -> None:
        need_probe = self.probe_batches is None
        need_forget = self.estimator_type.needs_forget_set and self.forget_batches is None
        if need_probe or need_forget:
            probe, forget = default_sets(run, self.config, need_probe, need_forget)
            self.probe_batches = probe if need_probe else self.probe_batches
            self.forget_batches = forget if need_forget else self.forget_batches

    def on_train_end(self, run) -> None:
        if self._pending is not None:  # a loop that does not call after_step
            self._write()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    def check_model(self, model, batch: Batch) -> None:
        """Before anything is written: refuse instances on a model the ghost path cannot split exactly."""
        if self.config.instances and detect_reduce_mode(model) != "sharded":  # a shard is not a model to run
            refuse_inexact_split(model, batch)

    def _before_forward(self, *_) -> None:
        if self.recorder is not None and not self._busy and torch.is_grad_enabled():
            self.recorder.drop_stale()

    def _arm(self, step: int) -> None:
        """Record the forwards of `step` when it is one to measure."""
        if self.recorder is not None:
            if step % self.config.every == 0:
                self.recorder.start()
            else:
                self.recorder.stop()

    def _device(self) -> torch.device:
        return self.layout.params[0].device

    # -- the measurement ---------------------------------------------------------------------------------------
    def after_backward(self, run, step) -> None:
        if step.step % self.config.every != 0:
            self._arm(step.step + 1)
            return
        started = time.perf_counter()
        G = param_grads(self.layout)
        self._busy = True
        try:
            with measurement_step(run.model, step) as measured:  # eval mode, new forwards when dropout is on
                effects, extra = self.estimator.measure(measured, G)
                sets = applied_sets(step, self.estimator_type.needs_forget_set, self.forget_batches, self.probe_batches)
                plain = self.beside.before_step(run.model, sets, (step.extra or {}).get("plain_grad"))
                if self.config.instances and self._reduce != "sharded":  # sharded values are partial here
                    forget = self.forget_batches if self.estimator_type.needs_forget_set else [measured.batch.forget]
                    risk = None if self.estimator_type.needs_forget_set else measured.loss_output.forget_risk
                    self.guard.check(run.model, self.layout, effects["u"], G, risk, forget, self.recorder)
        finally:
            self._busy = False
            if self.recorder is not None:
                self.recorder.clear()
        self._arm(step.step + 1)
        seconds = time.perf_counter() - started
        effects, ema = reduce_step(effects, extra.get("ema"), self._reduce, self._device())
        self.predicted.add(effects, step.lr, self.config.every)
        record = effect_record(
            step.step,
            step.lr,
            self.config.estimator,
            effects,
            self.config.tensors,
            predicted=self.predicted.values,
            ema=ema,
            weights=extra.get("weights"),
            objective_items=extra.get("objective_items"),
            seconds=seconds,
        )
        if plain is not None:
            record["plain"] = plain
        self._pending = record
        if not self.config.applied:
            self._write()

    def after_step(self, run, step) -> None:
        """After the optimizer step: u, the G-effect of the update it applied (`--geffect-applied`); the line."""
        if self._pending is not None:
            self.beside.complete(self._pending, step.lr, self.config.every)
            self._write()

    def _write(self) -> None:
        if self._main:
            self.folder.append_geffect(self._pending)
        self._pending = None
