"""Evaluation conventions: where the references compute a TOFU number differently, which way an evaluation did.

- ``geffect`` (default): truth ratio exact in log space, extraction strength 0 when the last token is wrong,
  every item of each set.
- ``openunlearning`` (locuslab/open-unlearning d3d7cf9, src/evals/metrics/memorization.py): ``truth_ratio``
  computes ``wrong_prob / (correct_prob + 1e-10)`` and ``closer_to_1_better`` ``min(tr, 1 / (tr + 1e-10))``;
  ``probability_w_options`` ``correct / (correct + wrong + 1e-10)``; ``extraction_strength``'s loop stops at
  k = T - 1, so an item whose last token is wrong scores 1/T; every item.
- ``legacy`` (locuslab/tofu aggregate_eval_stat.py and evaluate_util.py): exact ratios (``exp(pert - para)``),
  the first 300 items of each set (``ds_size``); no extraction strength (ours, unfloored, is reported).

The convention is recorded in TOFU_EVAL.json's ``geffect_meta.conventions`` and TOFU_SUMMARY.json; logs without
one are read as what made them (OpenUnlearning's files: ``openunlearning``; legacy logs: ``legacy``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from geffect.errors import UsageError

GUARD = 1e-10  # OpenUnlearning's additive guard in truth_ratio and probability_w_options


@dataclass(frozen=True)
class Convention:
    name: str
    truth_ratio_guard: float  # 0: exact; GUARD: OpenUnlearning's +1e-10 in the denominators
    extraction_strength_floor: bool  # True: 1/T when the last token is wrong (OpenUnlearning's loop)
    ds_size: int | None  # items scored per set when --ds-size is not given (None: all)

    def record(self) -> dict[str, Any]:
        return asdict(self)


CONVENTIONS: Mapping[str, Convention] = {
    "geffect": Convention("geffect", 0.0, False, None),
    "openunlearning": Convention("openunlearning", GUARD, True, None),
    "legacy": Convention("legacy", 0.0, False, 300),
}
DEFAULT_CONVENTION = "geffect"
# What a log that records no convention was made with, by its format (logs.py source_format).
BY_FORMAT = {"geffect": "geffect", "open-unlearning": "openunlearning", "legacy-tofu": "legacy"}


def get_convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise UsageError(f"unknown convention {name!r}; choose one of: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def convention_of(meta: Mapping[str, Any]) -> Convention:
    """The convention an evaluation's metadata records, else the one its format implies."""
    recorded = meta.get("conventions")
    if isinstance(recorded, Mapping) and recorded.get("name") in CONVENTIONS:
        base = CONVENTIONS[recorded["name"]]
        fields = {k: recorded.get(k, getattr(base, k)) for k in asdict(base)}
        return Convention(**fields)
    return CONVENTIONS[BY_FORMAT.get(meta.get("source_format"), DEFAULT_CONVENTION)]


def differences(a: Convention, b: Convention) -> list[str]:
    """The settings two conventions disagree on, as `name: a vs b` (ds_size compares the items actually scored
    elsewhere; here only the formulas)."""
    keys = ("truth_ratio_guard", "extraction_strength_floor")
    return [f"{k}: {getattr(a, k)} vs {getattr(b, k)}" for k in keys if getattr(a, k) != getattr(b, k)]
