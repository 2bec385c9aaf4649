"""`ge-project` (new): keep the step's first-order retaining G-effect non-negative (the paper's ideal region,
e_u < 0 and e_r >= 0), A-GEM's projection applied to unlearning.

G is the objective's gradient, grad R_r the gradient of the retain risk (mean token NLL) over the step's
retain items, e_r = grad R_r . G. When e_r < 0, G <- G - (e_r / ||grad R_r||^2) grad R_r, so e_r becomes 0 and
the forget side keeps what the constraint allows; with `per_group` the projection is done per parameter group
(embed, shallow, middle, deep, lm_head, other), each group whose own e_r is negative.
"""

from __future__ import annotations

import torch

from geffect.effects.blocks import discover_layout
from geffect.effects.tokens import risk_terms
from geffect.tokens import count_tokens
from geffect.updates.base import Grads, Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import combine, dot, gradient, split_pass, write_grads


def retain_risk_gradient(inputs: StepInputs) -> Grads:
    """grad R over the retain items of all the step's micro-batches (token mean over all of them)."""
    params = inputs.params
    batches = [b.retain for b in inputs.micro_batches]
    n_total = sum(count_tokens(b["labels"]) for b in batches)
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        with inputs.accelerator.autocast():
            risk = risk_terms(inputs.model, batch, n_total)[0]
        for acc, g in zip(total, gradient(risk, params)):
            acc.add_(g)
    return total


def project(G: Grads, g: Grads, groups: list[list[int]]) -> tuple[Grads, float, int]:
    """G with each group's negative e_r projected out; (new G, e_r before, groups projected)."""
    out = [x.clone() for x in G]
    before, projected = float(dot(g, G)), 0
    for members in groups:
        e = float(dot([g[i] for i in members], [G[i] for i in members]))
        size = float(dot([g[i] for i in members], [g[i] for i in members]))
        if e < 0 and size > 0:
            for i in members:
                out[i] = G[i] - (e / size) * g[i]
            projected += 1
    return out, before, projected


class GEffectProjection(UpdateRule):
    name = "ge-project"
    help = "project the gradient so that the retaining G-effect e_r on the retain batch is >= 0"
    params = {"per_group": Param(False, "project per parameter group instead of over all", kind=bool)}

    def setup(self, model, total_steps: int, seed: int) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.values["per_group"]:
            layout = discover_layout(model)
            by_group: dict[str, list[int]] = {}
            for i, p in enumerate(params):
                by_group.setdefault(layout.tensors[layout.index_of(p)].group, []).append(i)
            self.groups = list(by_group.values())
        else:
            self.groups = [list(range(len(params)))]
        self.steps = self.projected_steps = 0
        self.removed = 0.0

    def compute(self, inputs: StepInputs) -> StepResult:
        g_f, g_r, stats, out = split_pass(inputs)
        G = combine((1.0, g_f), (1.0, g_r))
        new, before, projected = project(G, retain_risk_gradient(inputs), self.groups)
        write_grads(inputs.params, new)
        self.steps += 1
        self.projected_steps += projected > 0
        self.removed += max(0.0, -before) if projected else 0.0
        info = {"projected": projected, "e_r_before": before}
        return StepResult(stats, inputs.micro_batches[-1], out, G, info)

    def summary(self) -> dict:
        share = self.projected_steps / self.steps if self.steps else None
        return {**super().summary(), "projected_steps": self.projected_steps, "projected_share": share}
