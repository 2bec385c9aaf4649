"""From a validated StudyConfig to the concrete work: models to prepare, references, and the unlearning runs.

Planning touches no model, no data and no network, so `--dry-run` can show it for any configuration.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from geffect.data.tofu import RETAIN_FOR_FORGET
from geffect.errors import UsageError
from geffect.schema import fail
from geffect.study.config import StudyConfig, method_spec, training_options

# Folder layout of a study, relative to its output folder.
BENCHMARK_DIR = "benchmark"
MODELS_DIR = "models"
EVALS_DIR = "evals"
RUNS_DIR = "runs"
EVAL_SUBDIR = "eval"  # inside a run folder
POINTS_SUBDIR = "points"  # inside a run folder or an evaluation folder: the points along the run (study/along.py)
OBJECTIVE_KEYS = ("gamma", "alpha")


class How(str, Enum):
    """How a model or a reference is obtained."""

    GIVEN = "given"  # a path or hub id used as is
    FINETUNE = "finetune"  # `base` fine-tuned on the split
    LOG = "log"  # a given evaluation log file
    EVALUATE = "evaluate"  # the retain model's evaluation

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ModelPlan:
    """How a model is obtained: given, or fine-tuned (`base` on `split`)."""

    role: str  # target | retain
    split: str  # training split: full, retain90, ...
    how: How  # GIVEN | FINETUNE
    source: str  # the given model, or the base to fine-tune
    folder: str | None = None  # study-relative output folder when fine-tuned


@dataclass(frozen=True)
class ReferencePlan:
    """Per forget split: the retain model's evaluation log that forget quality is measured against."""

    forget_split: str
    how: How  # LOG | EVALUATE
    retain_model: ModelPlan | None
    log_file: str | None  # the given file, when how == log
    eval_dir: str  # study-relative folder of the retain row's TOFU_EVAL/TOFU_SUMMARY


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    label: str  # the method's display name ("NPO+KL" or the entry's `name`)
    method: str
    retain_loss: str | None
    forget_split: str
    seed: int
    hparams: dict[str, float]  # method hyper-parameters (fixed params and this grid point)
    gamma: float | None  # None: the preset's (training.preset)
    alpha: float | None
    grid_point: dict[str, float]  # the grid's values for this run (for names and tables)
    training: dict[str, Any] = field(default_factory=dict)
    method_index: int = 0

    @property
    def folder(self) -> str:
        return f"{RUNS_DIR}/{self.run_id}"

    @property
    def eval_dir(self) -> str:
        return f"{self.folder}/{EVAL_SUBDIR}"

    @property
    def objective(self):
        """The run's ObjectiveConfig (geffect.objectives)."""
        from geffect.objectives import objective_config

        return objective_config(
            self.method,
            self.retain_loss,
            self.gamma,
            self.alpha,
            self.hparams,
            self.training.get("kl_mask"),
            self.training.get("preset", "geffect"),
        )

    @property
    def params(self) -> dict[str, float]:
        """Every hyper-parameter set in the configuration (fixed and grid), for the results table."""
        return {
            **({"gamma": self.gamma} if self.gamma is not None else {}),
            **({"alpha": self.alpha} if self.alpha is not None else {}),
            **self.hparams,
        }


@dataclass(frozen=True)
class StudyPlan:
    config: StudyConfig
    benchmark: str  # study-relative folder of the built-in benchmark, or the given source
    builtin: bool
    target: ModelPlan
    references: tuple[ReferencePlan, ...]
    runs: tuple[RunPlan, ...]

    @property
    def finetunes(self) -> list[ModelPlan]:
        plans = [self.target] + [r.retain_model for r in self.references if r.retain_model is not None]
        return [p for p in plans if p.how == How.FINETUNE]


def points_dir(folder: str) -> str:
    """Study-relative folder of the points along a run (or of a subset evaluation) under `folder`."""
    return f"{folder}/{POINTS_SUBDIR}"


def _number(value: float) -> str:
    return f"{value:g}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+.=_-]", "_", text)


def run_id(label: str, forget_split: str, grid_point: dict[str, float], seed: int) -> str:
    parts = [forget_split, _safe(label), *(f"{_safe(k)}{_number(v)}" for k, v in grid_point.items()), f"seed{seed}"]
    return "-".join(parts)


def expand_runs(config: StudyConfig) -> list[RunPlan]:
    runs: list[RunPlan] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(config.methods):
        path = f"methods[{index}]"
        method, retain = method_spec(entry, path)
        label = entry.name or entry.method
        options = training_options(config, index)
        keys = list(entry.grid)
        for values in itertools.product(*(entry.grid[k] for k in keys)):
            point = dict(zip(keys, (float(v) for v in values)))
            settings = {**{k: float(v) for k, v in entry.params.items()}, **point}
            hparams = {k: v for k, v in settings.items() if k not in OBJECTIVE_KEYS}
            for split in config.forget_splits:
                for seed in config.seeds:
                    run = RunPlan(
                        run_id=run_id(label, split, point, seed),
                        label=label,
                        method=method,
                        retain_loss=retain,
                        forget_split=split,
                        seed=seed,
                        hparams=hparams,
                        gamma=settings.get("gamma"),
                        alpha=settings.get("alpha"),
                        grid_point=point,
                        training=options,
                        method_index=index,
                    )
                    if run.run_id in seen:
                        raise fail(
                            path,
                            f"run {run.run_id} is also produced by {seen[run.run_id]}; give this entry a distinct name",
                        )
                    seen[run.run_id] = path
                    runs.append(run)
    return runs


def check_runs(config: StudyConfig, runs: list[RunPlan]) -> None:
    """Validate every run's objective and training options with the trainer's own checks (no I/O)."""
    from geffect.objectives import build_objective

    checked: set[tuple] = set()
    for run in runs:
        path = f"methods[{run.method_index}]"
        key = (run.method_index, tuple(sorted(run.hparams.items())), run.gamma, run.alpha)
        if key in checked:
            continue
        checked.add(key)
        try:
            build_objective(run.objective)
        except UsageError as err:
            raise fail(path, str(err)) from None
        training_path = f"{path}.training" if config.methods[run.method_index].training else "training"
        try:
            unlearn_config(config, run, model="model", data="data", out="out").validate()
        except UsageError as err:
            raise fail(training_path, str(err)) from None


def unlearn_config(config: StudyConfig, run: RunPlan, model: str, data: str, out: str, **extra):
    """The trainer's UnlearnConfig of one planned run."""
    from geffect.training.config import UnlearnConfig

    return UnlearnConfig(
        model=model,
        data=data,
        out=out,
        forget=run.forget_split,
        method=run.method,
        retain_loss=run.retain_loss,
        gamma=run.gamma,
        alpha=run.alpha,
        hparams=dict(run.hparams),
        seed=run.seed,
        template=config.template,
        dtype=config.model.dtype,
        **run.training,
        **extra,
    )


def plan_study(config: StudyConfig) -> StudyPlan:
    model = config.model
    builtin = config.benchmark.builtin is not None
    benchmark = BENCHMARK_DIR if builtin else config.benchmark.source
    if model.target is not None:
        target = ModelPlan("target", "full", How.GIVEN, model.target)
    else:
        target = ModelPlan("target", "full", How.FINETUNE, model.base, f"{MODELS_DIR}/target")
    references = []
    for split in config.forget_splits:
        retain_split = RETAIN_FOR_FORGET[split]
        eval_dir = f"{EVALS_DIR}/retain-{split}"
        if split in model.retain_logs:
            references.append(ReferencePlan(split, How.LOG, None, model.retain_logs[split], eval_dir))
            continue
        if split in model.retain:
            retain = ModelPlan("retain", retain_split, How.GIVEN, model.retain[split])
        else:
            retain = ModelPlan("retain", retain_split, How.FINETUNE, model.base, f"{MODELS_DIR}/{retain_split}")
        references.append(ReferencePlan(split, How.EVALUATE, retain, None, eval_dir))
    _check_points(config, references)
    runs = expand_runs(config)
    check_runs(config, runs)
    return StudyPlan(config, benchmark, builtin, target, tuple(references), tuple(runs))


def _check_points(config: StudyConfig, references: list[ReferencePlan]) -> None:
    """Points along the runs are scored against the retain model on the same subset: a given log cannot be cut."""
    if not config.eval.every:
        return
    for ref in references:
        if ref.how == How.LOG:
            raise fail(
                "eval.every",
                f"points along the runs need the retain model of {ref.forget_split} to score the points subset, "
                f"but model.retain_logs gives only its log; give model.retain.{ref.forget_split} or drop eval.every",
            )


def resolved_hparams(run: RunPlan) -> dict[str, float]:
    """The run's objective hyper-parameters with the method's defaults filled in (as the trainer will use them)."""
    from geffect.objectives import build_objective

    objective = build_objective(run.objective)
    shown = {"gamma": objective.config.gamma} if objective.config.gamma != 1.0 else {}
    if objective.retain.compute is not None or objective.config.alpha != 1.0:
        shown["alpha"] = objective.config.alpha
    return {**shown, **objective.config.hparams}


def describe(plan: StudyPlan, out: str) -> list[str]:
    """Human-readable lines: what each stage would do, then one line per unlearning run."""
    config = plan.config
    root = PurePosixPath(out)
    lines = [f"study {config.name!r} -> {out}: {len(plan.runs)} unlearning run(s)"]
    if plan.builtin:
        b = config.benchmark.builtin
        lines.append(f"  benchmark: built-in, {b.authors} authors, seed {b.seed} -> {root / BENCHMARK_DIR}")
    else:
        n = config.benchmark.retain_authors
        sliced = f", cut to the forget authors + the first {n} retain authors" if n is not None else ""
        lines.append(f"  benchmark: {plan.benchmark}{sliced}")
    for model in [plan.target] + [r.retain_model for r in plan.references if r.retain_model is not None]:
        if model.how == How.FINETUNE:
            lines.append(f"  {model.role} model: fine-tune {model.source} on {model.split} -> {root / model.folder}")
        else:
            lines.append(f"  {model.role} model ({model.split}): {model.source}")
    for ref in plan.references:
        what = f"given log {ref.log_file}" if ref.how == How.LOG else f"evaluate the {ref.retain_model.split} model"
        lines.append(f"  reference for {ref.forget_split}: {what}")
    lines.append(f"  evaluate the target model on {', '.join(r.forget_split for r in plan.references)}")
    g = config.geffect.tracker
    tracking = (
        f"G-effects every {g.every} step(s), estimator {g.estimator}"
        + (", per item" if g.instances else "")
        + (", instance scatter" if g.scatter else "")
        if config.geffect.enabled
        else "no G-effects"
    )
    every = config.eval.every
    if every:
        points = config.eval.points()
        lines.append(
            f"  points along each run: every {every} step(s) and the last, first {points.ds_size} items of each set, "
            f"{points.max_new_tokens} generated tokens, against the retain model on the same items"
        )
    lines.append(f"  {len(plan.runs)} unlearning run(s), {tracking}, each then evaluated:")
    for run in plan.runs:
        t = run.training
        params = ", ".join(f"{k}={_number(v)}" for k, v in resolved_hparams(run).items()) or "no hyper-parameters"
        steps = f", max {t['max_steps']} steps" if t.get("max_steps") else ""
        if t.get("update", "plain") != "plain":  # the update rule (geffect.updates) and its parameters
            steps += f", update {t['update']}" + "".join(f" {k}={v}" for k, v in (t.get("update_params") or {}).items())
        lines.append(
            f"    run {run.run_id}: {run.method}"
            f"{'+' + run.retain_loss if run.retain_loss else ''} ({params}) on {run.forget_split}, seed {run.seed}, "
            f"{t['epochs']} epoch(s), lr {_number(t['lr'])}, batch {t['batch_size']}x{t['grad_accum']}{steps}"
        )
    if plan.config.relearn is not None:
        r = plan.config.relearn
        lines.append(
            f"  then a relearning attack on each run: {', '.join(map(str, r.samples))} forget item(s), {r.steps} steps, "
            f"lr {_number(r.lr)}, batch {r.batch_size}, each evaluated"
        )
    lines.append("  then: results.csv, results.md, figures/, index.html")
    return lines
