"""The G-effect records: one line of RUN/geffect.jsonl (in-run) or of a post-hoc file, and the layout file.

    effect_record(step, lr, "batch", {"u": effect_u, "r": effect_r}, tensors=True, predicted=..., ...)

Both the in-run tracker and `geffect effects` build their lines here, so the two files share one schema
(docs/geffect-format.md); `geffect.runfolder.RunFolder` writes and reads them (non-finite numbers as null).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from geffect.effects.blocks import ParameterLayout
from geffect.effects.dots import Breakdown
from geffect.effects.engine import SetEffect
from geffect.tokens import Batch

SIDES = ("u", "r")


def effect_record(
    step: int | None,
    lr: float | None,
    estimator: str,
    effects: Mapping[str, SetEffect],
    tensors: bool = False,
    *,
    predicted: Mapping[str, float] | None = None,
    ema: Mapping[str, Breakdown] | None = None,
    weights: dict | None = None,
    objective_items: dict | None = None,
    seconds: float | None = None,
) -> dict:
    """One line in the schema of RUN/geffect.jsonl: the keys in the documented order, optional ones only when
    given (`predicted`, `ema`: per side, keyed "u" / "r" and "e_u" / "e_r"; empty `weights` are left out)."""
    record: dict[str, Any] = {"step": step, "lr": lr, "estimator": estimator}
    for side in SIDES:
        effect = effects[side]
        record[f"e_{side}"] = effect.breakdown.to_json(tensors=tensors)
        record[f"risk_{side}"] = effect.risk
        record[f"n_tokens_{side}"] = effect.n_tokens
        if effect.items is not None:
            record[f"items_{side}"] = {str(k): v for k, v in effect.items.items()}
        if effect.tokens is not None:
            record[f"tokens_{side}"] = {str(k): v for k, v in effect.tokens.items()}
    if predicted is not None:
        record["predicted_change"] = {"e_u": predicted["u"], "e_r": predicted["r"]}
    if ema is not None:
        record["ema"] = {k: v.to_json(tensors=tensors) for k, v in ema.items()}
    if weights:
        record["weights"] = weights
    if objective_items is not None:
        record["objective_items"] = objective_items
    if seconds is not None:
        record["seconds"] = seconds
    return record


class PredictedChange:
    """The cumulative first-order prediction -sum_t eta_t e_t of each risk's change (`predicted_change`)."""

    def __init__(self) -> None:
        self.values = {"u": 0.0, "r": 0.0}

    def add(self, effects: Mapping[str, SetEffect], lr: float, every: int) -> None:
        """One measured step standing for `every` steps; non-finite G-effects add nothing."""
        for side in SIDES:
            total = effects[side].total
            if math.isfinite(total):
                self.values[side] += -lr * total * every

    def restore(self, records: list[dict]) -> None:
        """Continue from the last prediction of the records a resumed run keeps."""
        for record in records:
            if "predicted_change" in record:
                self.values = {"u": record["predicted_change"]["e_u"], "r": record["predicted_change"]["e_r"]}


def layout_record(layout: ParameterLayout, settings: dict) -> dict:
    """RUN/geffect_layout.json: the parameter layout of the records and the tracker's settings."""
    return {
        **layout.describe(),
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "layer": t.layer, "group": t.group} for t in layout.tensors
        ],
        "tracker": settings,
    }


def forget_item_weights(out, batch: Batch) -> dict:
    """The objective's weights per forget item (`weights`): item weight and/or mean token weight over answer tokens."""
    ids = [int(i) for i in batch["index"]]
    result: dict[str, dict] = {}
    if out.item_weights is not None:
        result["item"] = {str(i): float(w) for i, w in zip(ids, out.item_weights.detach().float().reshape(-1).tolist())}
    if out.token_weights is not None:
        weights = out.token_weights.detach().float()
        labels = batch["labels"]
        # token weights may be aligned with the labels [B, T] or with the shifted labels [B, T-1]
        mask = (labels[:, 1:] if weights.shape[1] == labels.shape[1] - 1 else labels) != -100
        if weights.shape[1] == labels.shape[1]:
            mask = mask.clone()
            mask[:, 0] = False
        mask = mask.to(weights.device)
        sums = (weights * mask).sum(1)
        counts = mask.sum(1).clamp(min=1)
        result["token_mean"] = {str(i): float(v) for i, v in zip(ids, (sums / counts).tolist())}
    return result
