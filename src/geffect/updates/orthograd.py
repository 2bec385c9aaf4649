"""`orthograd` (Shamsian et al., 2025, "Go Beyond Your Means: Unlearning with Per-Sample Gradient
Orthogonalization"): per parameter tensor, the forget gradient g_f with every direction spanned by the retain
batch's per-item gradients removed.

    G_r = the per-item gradients of the retain NLL over the step's retain items (B x d, per tensor)
    P(g_f) = g_f - Q Q^T g_f,  Q an orthonormal basis of the rows of G_r (QR of G_r^T)
    gradient = alpha * mean_i g_r,i + (1 - alpha) * P(g_f)

`mode: mean` projects against the mean retain gradient only. alpha 0 is pure projected ascent: its first-order
retaining G-effect on every retain item of the batch is 0. g_f is the objective's forget term's gradient (for
GA minus the forget NLL's); an objective's own retain term, if it has one, is added unprojected. The basis is
computed in float64.
"""

from __future__ import annotations

import torch

from geffect.updates.base import Grads, Param, StepInputs, StepResult, UpdateRule
from geffect.updates.passes import combine, split_pass, write_grads
from geffect.updates.persample import WAYS, per_item_gradients


def _unit(x) -> str | None:
    return None if 0.0 <= x <= 1.0 else f"must be in [0, 1], got {x}"


def span_projection(g: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """g (any shape) minus its component in the span of `rows` [B, *g.shape], in float64."""
    A = rows.reshape(rows.shape[0], -1).double().T  # d x B
    Q, R = torch.linalg.qr(A, mode="reduced")
    diag = R.diagonal().abs()
    keep = diag > diag.max().clamp(min=1e-300) * 1e-12 if diag.numel() else diag.bool()
    Q = Q[:, keep]
    flat = g.reshape(-1).double()
    return (flat - Q @ (Q.T @ flat)).reshape(g.shape)


def mean_projection(g: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """g minus its component along the mean of `rows`, in float64."""
    m, flat = rows.double().mean(0).reshape(-1), g.reshape(-1).double()
    size = float(m @ m)
    return (flat - (float(m @ flat) / size) * m if size > 0 else flat).reshape(g.shape)


PROJECTIONS = {"span": span_projection, "mean": mean_projection}


def retain_rows(inputs: StepInputs, way: str) -> list[torch.Tensor]:
    """Per tensor, the per-item retain NLL gradients of all the step's micro-batches [B_total, *shape]."""
    parts = [per_item_gradients(inputs.model, inputs.params, b.retain, way) for b in inputs.micro_batches]
    return [torch.cat([part[k] for part in parts]) for k in range(len(inputs.params))]


class OrthoGrad(UpdateRule):
    name = "orthograd"
    help = "per-sample gradient orthogonalisation of the forget gradient against the retain batch"
    params = {
        "alpha": Param(0.5, "weight of the mean retain gradient (0: pure projected forget gradient)", check=_unit),
        "mode": Param(
            "span",
            "project against the span of the per-item gradients, or their mean",
            kind=str,
            choices=tuple(PROJECTIONS),
        ),
        "per_item": Param("vmap", "how per-item gradients are computed", kind=str, choices=WAYS),
    }

    def compute(self, inputs: StepInputs) -> StepResult:
        g_f, g_obj_r, stats, out = split_pass(inputs)
        rows = retain_rows(inputs, self.values["per_item"])
        project = PROJECTIONS[self.values["mode"]]
        alpha = float(self.values["alpha"])
        projected: Grads = [project(g, r).to(g.dtype) for g, r in zip(g_f, rows)]
        mean_retain: Grads = [r.mean(0) for r in rows]
        write_grads(inputs.params, combine((alpha, mean_retain), (1.0 - alpha, projected), (1.0, g_obj_r)))
        return StepResult(stats, inputs.micro_batches[-1], out, combine((1.0, g_f), (1.0, g_obj_r)))
