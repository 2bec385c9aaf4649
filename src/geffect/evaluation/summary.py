"""Aggregate numbers of an evaluation (``TOFU_SUMMARY.json``), recomputed from its per-item values."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from geffect.evaluation.conventions import convention_of, differences
from geffect.evaluation.logs import EvalLog, check_retain_compatible, eval_log_from_dict
from geffect.evaluation.registry import METRICS, UTILITY_COMPONENTS

# Always present in a summary, null when they cannot be computed (never invented).
HEADLINE = ("model_utility", "forget_quality", "forget_truth_ratio", *UTILITY_COMPONENTS, "privleak")


def recompute(evaluation: EvalLog | Mapping[str, Any], retain: EvalLog | Mapping[str, Any] | None = None) -> EvalLog:
    """The evaluation with every aggregate recomputed (forget quality and privleak against `retain`)."""
    log = eval_log_from_dict(evaluation)
    retain_log = None if retain is None else eval_log_from_dict(retain).completed()
    if retain_log is not None:
        check_retain_compatible(log, retain_log)
    result = log.completed(retain_log)
    result.meta["retain_log"] = None if retain_log is None else retain_log.source
    warning = None if retain_log is None else convention_warning(log, retain_log)
    if warning:
        logging.getLogger(__name__).warning(warning)
    result.meta["convention_warning"] = warning
    return result


def convention_warning(log: EvalLog, retain: EvalLog) -> str | None:
    """A sentence when the model's and the retain model's logs were made under different conventions (their
    forget quality compares different numbers), else None."""
    mine, theirs = convention_of(log.meta), convention_of(retain.meta)
    diff = differences(mine, theirs)
    if not diff:
        return None
    return (
        f"{log.source} was evaluated under convention {mine.name} but the retain log {retain.source} under "
        f"{theirs.name} ({'; '.join(diff)}): forget quality compares numbers computed differently"
    )


def summarize(
    eval_dict: EvalLog | Mapping[str, Any], retain_eval: EvalLog | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One flat dict: every metric's aggregate by OpenUnlearning name, the KS statistic, and what produced them.

    `eval_dict` and `retain_eval` may be in any supported format (ours, OpenUnlearning's, legacy TOFU).
    """
    log = recompute(eval_dict, retain_eval)
    summary: dict[str, Any] = {name: None for name in HEADLINE}
    for name in METRICS:
        if name in log.entries:
            summary[name] = _plain(log.entries[name].get("agg_value"))
    summary["forget_quality_ks_statistic"] = _plain(log.entries.get("forget_quality", {}).get("ks_statistic"))
    for key in ("convention", "ds_size", "forget_split", "set_sizes", "source_format", "retain_log"):
        summary[key] = log.meta.get(key)
    summary["conventions"] = convention_of(log.meta).record()
    summary["convention_warning"] = log.meta.get("convention_warning")
    return summary


def _plain(value: Any) -> Any:
    return None if value is None else float(value)
