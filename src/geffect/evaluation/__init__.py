"""TOFU evaluation: metrics over per-item values, the per-item runner, and the file formats of the field."""

from geffect.evaluation.logs import EvalLog, eval_log_from_dict, load_eval_file
from geffect.evaluation.registry import METRICS, UTILITY_COMPONENTS, compute_metrics
from geffect.evaluation.runner import evaluate, plan_evaluation
from geffect.evaluation.summary import recompute, summarize

__all__ = [
    "METRICS",
    "UTILITY_COMPONENTS",
    "EvalLog",
    "compute_metrics",
    "eval_log_from_dict",
    "evaluate",
    "load_eval_file",
    "plan_evaluation",
    "recompute",
    "summarize",
]
