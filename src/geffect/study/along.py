"""Evaluation along an unlearning run: the study's `eval.every` and the callback that scores the points.

A method that over-unlearns and one that stops early sit at different points of their forget quality /
model utility trade-off at the end of a run, so comparing end points compares the stopping point as much as
the method. With `eval.every: N` each run is also evaluated after every N optimizer steps and after its last
step, on a fixed subset of every evaluation set (the first `eval.points_ds_size` items of each, the same for
every run, with its own retain-model reference on that subset), which gives each run its path in that plane.
The step-0 point of every path is the target model, scored once on the same subset.

The points are scored inside the unlearning loop (`EvalPoints`, a `StepCallback`): at the callback of step
k+1 the weights are those after k updates, so a point at step k is the model after k optimizer steps.
Scoring runs without gradients and leaves p.grad untouched; the model is put back into training mode.
Because the points are scored inside the runs, changing `eval.every` or the points options redoes the runs.
Under several processes the main process scores the points (the unwrapped model must be whole there, as
under DDP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from geffect.evaluation.config import EvalConfig
from geffect.evaluation.logs import EVAL_FILE, SUMMARY_FILE
from geffect.io import atomic_write_json
from geffect.options import at_least, option

POINT_PREFIX = "step-"
POINT_TIMING = "point.json"  # {"step": k, "seconds": s}: what scoring the point cost (benchmarks/bench_demo.py)


@dataclass
class StudyEval(EvalConfig):
    """A study's `eval:` section: the scoring options of every evaluation, and the points along each run."""

    every: int | None = option(
        None,
        "also evaluate each unlearning run after every N optimizer steps and after its last step (on the points "
        "subset); default: only the end point",
        check=at_least(1),
        metavar="N",
    )
    points_ds_size: int = option(
        50, "items of each evaluation set scored at the points along a run (the first N of each)", check=at_least(1)
    )
    points_max_new_tokens: int | None = option(
        None, "greedy generation length at the points along a run; default: max_new_tokens", check=at_least(1)
    )

    def end_point(self) -> dict:
        """The options of an end-point evaluation (what its results depend on)."""
        return {"ds_size": self.ds_size, "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens}

    def points(self) -> EvalConfig:
        """The scoring options of a point along a run (and of the subset references): the end point's formulas
        and questions on the subset; the opt-in extra attacks (reference model, gradient norm) only at the end."""
        return EvalConfig(
            ds_size=self.points_ds_size,
            batch_size=self.batch_size,
            max_new_tokens=self.points_max_new_tokens or self.max_new_tokens,
            convention=self.convention,
            question_key=self.question_key,
        )


def point_name(step: int) -> str:
    return f"{POINT_PREFIX}{step:05d}"


def point_step(folder: Path) -> int | None:
    """The step of a point folder (`step-00012` -> 12), None for another name."""
    name = folder.name
    if not name.startswith(POINT_PREFIX) or not name[len(POINT_PREFIX) :].isdigit():
        return None
    return int(name[len(POINT_PREFIX) :])


@dataclass
class PointsJob:
    """What the callback needs to score a point: the data, the subset options and the subset reference."""

    every: int
    data: str
    forget_split: str
    template: str
    reference: str  # the retain model's TOFU_EVAL.json on the same subset
    options: EvalConfig
    folder: str  # where the points go: one sub-folder per step


class EvalPoints:
    """Scores the model after every `every` optimizer steps and after the last one (see the module docstring)."""

    retain_graph = False
    settings_name = None  # what it writes lives beside the run folder's files, not in them

    def __init__(self, job: PointsJob):
        self.job = job

    def settings(self) -> dict:
        return {}

    def on_train_begin(self, run) -> None:
        pass

    def after_backward(self, run, step) -> None:
        done = step.step - 1  # updates applied so far
        if done > 0 and done % self.job.every == 0:
            self.score(run, done)

    def on_train_end(self, run) -> None:
        self.score(run, run.total_steps)

    def score(self, run, step: int) -> None:
        if not run.accelerator.is_main_process:
            return
        model = run.model
        training = model.training
        folder = Path(self.job.folder) / point_name(step)
        started = time.perf_counter()
        try:
            score_point(model, run.tokenizer, self.job, folder)
        finally:
            model.train(training)
        atomic_write_json(folder / POINT_TIMING, {"step": step, "seconds": time.perf_counter() - started})


def score_point(model, tokenizer, job: PointsJob, folder: Path) -> None:
    """TOFU_EVAL.json of `model` on the subset, then TOFU_SUMMARY.json against the subset reference."""
    from geffect.evaluation import evaluate, summarize
    from geffect.evaluation.extra import extra_metric_options
    from geffect.evaluation.logs import load_eval_file

    options = job.options
    results = evaluate(
        model,
        tokenizer,
        job.data,
        job.forget_split,
        job.template,
        retain_logs=job.reference,
        ds_size=options.ds_size,
        batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens,
        **extra_metric_options(options, None, next(model.parameters()).device),
    )
    atomic_write_json(folder / EVAL_FILE, results)
    atomic_write_json(folder / SUMMARY_FILE, summarize(results, load_eval_file(job.reference)))
