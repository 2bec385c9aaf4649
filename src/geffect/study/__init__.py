"""A whole unlearning study from one YAML file: benchmark, target and retain models, reference evaluations,
every method x hyper-parameter x forget split x seed with G-effect tracking, evaluation, tables, figures and
an HTML report.

    config = load_config("examples/builtin-cpu.yaml")
    run_study(config, "runs/demo")            # or dry_run=True to list the runs without loading anything
"""

from geffect.study.config import StudyConfig, load_config, parse_config
from geffect.study.pipeline import StudyResult, run_study
from geffect.study.plan import StudyPlan, describe, plan_study

__all__ = [
    "StudyConfig",
    "StudyPlan",
    "StudyResult",
    "describe",
    "load_config",
    "parse_config",
    "plan_study",
    "run_study",
]
