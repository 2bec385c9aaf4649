"""G-effects beside e = grad R . G: of the update the optimizer applied, and of the plain objective gradient.

The paper's link between G-effect and risk change assumes a plain gradient step. With AdamW (or any update
rule) the weights move by theta_{t+1} - theta_t = -lr_t d_t with d_t != G, so the tracker also logs

    u(D) = grad R(D) . (theta_t - theta_{t+1}) / lr_t      (same sign convention as e: u < 0 raises the risk)

whose first-order prediction -sum_t lr_t u_t follows the measured risk change. Before the step,
`ApplySide.before_step` takes grad R(D) at theta_t for each side's set and the anchors grad R . theta_t per
tensor (float64); after it, `after_step` needs only grad R . theta_{t+1}: no copy of the weights is kept.
Where an update rule hands the optimizer a gradient other than the objective's, the same grad R gives the
plain objective gradient's G-effects (`plain`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from geffect.effects.blocks import ParameterLayout
from geffect.effects.dots import Breakdown, tensor_dots
from geffect.effects.tokens import risk_terms
from geffect.tokens import Batch, count_tokens


def set_gradient(model: torch.nn.Module, params: Sequence[torch.Tensor], batches: Sequence[Batch]) -> list:
    """grad R(D) for the union of `batches` (token mean over all of them), one backward per batch."""
    device = params[0].device
    n_total = sum(count_tokens(b["labels"]) for b in batches)
    total = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for batch in batches:
            risk = risk_terms(model, {k: v.to(device) for k, v in batch.items()}, n_total)[0]
            grads = torch.autograd.grad(risk, list(params), allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g.detach())
    return total


def dots64(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-tensor dot products computed in float64 throughout: the anchors of u differ from grad R . theta_{t+1}
    by a part in lr, which an fp32 accumulation would drown."""
    return torch.stack([(a.double() * b.double()).sum() for a, b in zip(left, right)])


class AppliedEffects:
    """The `applied` (u) and `plain` G-effects of one measured step (see the module docstring)."""

    def __init__(self, layout: ParameterLayout):
        self.layout = layout
        self._grads: dict[str, list] = {}
        self._anchors: dict[str, torch.Tensor] = {}

    def before_step(
        self, model: torch.nn.Module, sets: Mapping[str, Sequence[Batch]], plain: Mapping[int, torch.Tensor] | None
    ) -> dict[str, Breakdown] | None:
        """Take grad R per side at theta_t; returns the plain gradient's effects when `plain` is given."""
        params = self.layout.params
        weights = [p.detach() for p in params]
        self._grads = {side: set_gradient(model, params, batches) for side, batches in sets.items()}
        self._anchors = {side: dots64(g, weights) for side, g in self._grads.items()}
        if plain is None:
            return None
        G = [plain.get(id(p)) for p in params]
        return {f"e_{side}": Breakdown(tensor_dots(g, G).cpu(), self.layout) for side, g in self._grads.items()}

    def after_step(self, lr: float) -> dict[str, Breakdown] | None:
        """u per side after the optimizer step (None when lr is 0 or nothing was taken)."""
        if not self._grads or not lr:
            self._grads, self._anchors = {}, {}
            return None
        weights = [p.detach() for p in self.layout.params]
        out = {
            f"u_{side}": Breakdown(((self._anchors[side] - dots64(g, weights)) / lr).cpu(), self.layout)
            for side, g in self._grads.items()
        }
        self._grads, self._anchors = {}, {}
        return out


def applied_sets(step, whole_sets: bool, forget: Sequence[Batch] | None, probe: Sequence[Batch] | None) -> dict:
    """The sets u and plain are measured on: the estimator's whole sets, or the step's forget batch and its
    retain batch (else the first probe batch)."""
    if whole_sets:
        return {"u": list(forget), "r": list(probe)}
    retain = step.batch.retain
    return {"u": [step.batch.forget], "r": [retain] if retain is not None else list(probe[:1])}


class BesideEffects:
    """What the tracker adds to a line: `plain` (the objective gradient's e where the rule's differs, at
    theta_t) and, with `applied`, `applied` (u per side and its cumulative prediction -sum lr u)."""

    def __init__(self, layout: ParameterLayout, applied: bool, tensors: bool):
        self.effects = AppliedEffects(layout)
        self.applied, self.tensors = applied, tensors
        self.predicted = {"u": 0.0, "r": 0.0}

    def before_step(self, model, sets: Mapping[str, Sequence[Batch]], plain) -> dict | None:
        """At theta_t, after the step's backward: grad R per side (when needed); the `plain` part or None."""
        if not self.applied and plain is None:
            return None
        effects = self.effects.before_step(model, sets, plain)
        return None if effects is None else {k: v.to_json(tensors=self.tensors) for k, v in effects.items()}

    def complete(self, record: dict, lr: float, every: int) -> None:
        """After the optimizer step: `applied` into `record` (nothing when lr is 0)."""
        effects = self.effects.after_step(lr) if self.applied else None
        if effects is None:
            return
        for side in ("u", "r"):
            self.predicted[side] += -lr * effects[f"u_{side}"].total * every
        record["applied"] = {k: v.to_json(tensors=self.tensors) for k, v in effects.items()}
        record["applied"]["predicted_change"] = {f"u_{side}": value for side, value in self.predicted.items()}

    def restore(self, records: list[dict]) -> None:
        """Continue the prediction from the records a resumed run keeps."""
        for record in records:
            if "applied" in record:
                kept = record["applied"]["predicted_change"]
                self.predicted = {"u": kept["u_u"], "r": kept["u_r"]}
