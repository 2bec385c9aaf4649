"""The paper's instance scatter: the objective side of a step split per forget item.

e_{u,i} = grad R_u . G_i and e_{r,i} = grad R_r . G_i, with G_i the part of G that reaches the model through
forget item i's forward. The step's own backward passed G_i's output gradients through the hooked modules of
the forget forward; the recorder kept them, and replaying them against a direction d gives d . G_i for every
item at once. The directions grad R_u and grad R_r come from the sides' ghost backwards (which then also
return the gradient), or, for a replayed u under loss = a_f R_u + a_r R_r, from (G - a_r grad R_r) / a_f.
"""

from __future__ import annotations

import torch

from geffect.effects.engine import SetEffect
from geffect.effects.ghost import GhostRecorder
from geffect.tokens import Batch


def forget_forward(recorder: GhostRecorder | None, forget_batch: Batch, retain_batch: Batch) -> int | None:
    """The recorded forward of the forget batch when the step's graph holds just it (and the retain
    batch's): only then are its kept output gradients the whole of each forget item's part of G (a
    refusal forward, as in IdkPO/DPO, or identical batches make the split ambiguous)."""
    if recorder is None or not recorder.keep_deltas:
        return None
    forget = recorder.forwards_of(forget_batch["input_ids"])
    retain = recorder.forwards_of(retain_batch["input_ids"])
    if len(forget) != 1 or forget[0] in retain:
        return None
    if any(k != forget[0] and k not in retain for k in recorder.forward_ids):
        return None
    return forget[0]


def objective_items(
    recorder: GhostRecorder,
    forward: int,
    batch: Batch,
    effects: dict[str, SetEffect],
    G: list[torch.Tensor | None],
    linear: tuple[float, float] | None,
) -> dict | None:
    """{forget item id: {"e_u": grad R_u . G_i, "e_r": grad R_r . G_i}}, or None when a replay fails; the
    sides' gradients (`SetEffect.gradient`) are dropped afterwards."""
    a_f, a_r = linear if linear is not None else (None, None)
    directions = {"r": [(effects["r"].gradient, 1.0)]}
    if effects["u"].gradient is not None:
        directions["u"] = [(effects["u"].gradient, 1.0)]
    else:  # replayed under loss = a_f R_u + a_r R_r: grad R_u = (G - a_r grad R_r) / a_f
        directions["u"] = [(G, 1.0 / a_f)] + ([(effects["r"].gradient, -a_r / a_f)] if a_r else [])
    items = _replayed_items(recorder, forward, batch, directions)
    for effect in effects.values():
        effect.gradient = None
    return items


def _replayed_items(recorder: GhostRecorder, forward: int, batch: Batch, directions: dict) -> dict | None:
    size = batch["labels"].shape[0]
    values = {}
    for side, terms in directions.items():
        total = None
        for vector, scale in terms:
            if vector is None:
                return None
            result = recorder.replay(forward, vector, size, scale)
            if result is None or result.unitemised_tensors:
                return None
            total = result.items if total is None else total + result.items
        values[side] = total.tolist()
    ids = [int(i) for i in batch["index"]]
    return {str(i): {"e_u": u, "e_r": r} for i, u, r in zip(ids, values["u"], values["r"])}
