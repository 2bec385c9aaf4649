"""Read back what an unlearning run wrote (through `geffect.runfolder.RunFolder`) and the JSON files of a study.

Every report in this package is rendered from these readers, never from values held in memory by the
pipeline, so a figure or a table always shows what is on disk.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from geffect.errors import UsageError
from geffect.runfolder import RunFolder

EFFECT_KEYS = ("e_u", "e_r")
GROUPS = ("embed", "shallow", "middle", "deep", "lm_head", "other")


@dataclass
class RunFiles:
    """The logs of one unlearning run folder (lists are empty when a file is absent)."""

    path: Path
    log: list[dict] = field(default_factory=list)
    geffect: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: str | Path) -> RunFiles:
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise UsageError(f"run folder {folder.path} does not exist; pass the --out folder of an unlearning run")
    if not folder.is_run():
        raise UsageError(
            f"{folder.path} holds neither {RunFolder.LOG} nor {RunFolder.GEFFECT}; pass the --out folder of an unlearning run"
        )
    return RunFiles(path=folder.path, log=folder.read_log(), geffect=folder.read_geffect(), config=folder.read_config())


def read_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def as_float(value) -> float:
    """A logged number as float; None, missing and non-numeric values become NaN (drawn as gaps)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# Accessors for one line of geffect.jsonl (format: docs/geffect-format.md). `side` is "u" (forget set) or "r".


def effect_total(record: dict, key: str) -> float:
    effect = record.get(key)
    return as_float(effect.get("total") if isinstance(effect, dict) else effect)


def ema_total(record: dict, key: str) -> float:
    """The paper's smoothed variant (EMA of the gradients, then the dot product), NaN when not logged."""
    return effect_total(record.get("ema") or {}, key)


def side_risk(record: dict, side: str) -> float:
    """Mean token NLL of the set the side's G-effect was measured on."""
    return as_float(record.get(f"risk_{side}"))


def predicted_change(record: dict, side: str) -> float:
    """Cumulative first-order prediction -Σ η_t e_t of the side's risk change, up to and including this step."""
    return as_float((record.get("predicted_change") or {}).get(f"e_{side}"))


def item_contributions(record: dict, side: str) -> dict[str, float]:
    """Per-item contributions c_i (they sum to the side's total), keyed by item id; empty when not logged."""
    return {str(k): as_float(v) for k, v in (record.get(f"items_{side}") or {}).items()}


def objective_items(record: dict) -> dict[str, tuple[float, float]]:
    """Per forget item, (grad R_u . G_i, grad R_r . G_i): the objective-side split of the paper's scatter."""
    return {
        str(k): (as_float(v.get("e_u")), as_float(v.get("e_r")))
        for k, v in (record.get("objective_items") or {}).items()
    }


def item_weights(record: dict) -> dict[str, float]:
    """The objective's weight per forget item: its item weight, else the mean of its token weights."""
    weights = record.get("weights") or {}
    chosen = weights.get("item") or weights.get("token_mean") or {}
    return {str(k): as_float(v) for k, v in chosen.items()}


def final_effects(run: RunFiles) -> dict[str, float]:
    """e_u and e_r of the last measured step (NaN when the run logged no G-effects)."""
    last = run.geffect[-1] if run.geffect else {}
    return {key: effect_total(last, key) for key in EFFECT_KEYS}
