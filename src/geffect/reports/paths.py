"""Each run's path in the forget quality / model utility plane, read back from its points along the run.

The points (`geffect.study.along`) are scored on the points subset (the first `eval.points_ds_size` items of
every set) against the retain model on the same items; the step-0 point of every path is the target model on
that subset (`evals/target-<split>/points`). A run without points has an empty path.

Forget quality at matched utility (`fq_at_matched_utility`): the highest forget quality among a run's points
whose model utility is at least MATCHED_UTILITY_FRACTION of the target's (on the subset). It compares methods
at the same cost in utility instead of wherever each run happened to stop; the step-0 point always qualifies,
so the value is defined for every run with points.

Model utility at matched forgetting (`mu_at_matched_forgetting`): for two runs, the level is the lower of their
best forget qualities (a level both reach); each run's value is its highest model utility among its points
whose forget quality reaches that level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from geffect.evaluation.logs import SUMMARY_FILE
from geffect.reports.runfiles import as_float, read_json
from geffect.study.along import point_step

MATCHED_UTILITY_FRACTION = 0.9


@dataclass(frozen=True)
class Point:
    step: int
    forget_quality: float
    model_utility: float
    forget_prob: float


def read_point(folder: Path, step: int) -> Point | None:
    path = folder / SUMMARY_FILE
    if not path.exists():
        return None
    summary = read_json(path)
    return Point(
        step,
        as_float(summary.get("forget_quality")),
        as_float(summary.get("model_utility")),
        as_float(summary.get("forget_Q_A_Prob")),
    )


def target_points(study_dir: Path, entries) -> dict[str, Point]:
    """Per forget split, the target model on the points subset (the step-0 point of every path)."""
    points = {}
    for entry in entries:
        points_dir = getattr(entry, "points_dir", None)
        if entry.kind == "target" and points_dir:
            point = read_point(study_dir / points_dir, 0)
            if point is not None:
                points[entry.forget_split] = point
    return points


def run_path(study_dir: Path, entry, start: Point | None) -> list[Point]:
    """The run's points in step order, its step-0 point (the target) first; empty without points."""
    points_dir = getattr(entry, "points_dir", None)
    folder = study_dir / points_dir if points_dir else None
    if folder is None or not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        step = point_step(child)
        point = read_point(child, step) if step is not None else None
        if point is not None:
            found.append(point)
    found.sort(key=lambda p: p.step)
    return ([start] if start is not None else []) + found


def study_paths(study_dir: str | Path, entries) -> dict[str, list[Point]]:
    """Every run's path, by run name (runs without points are left out)."""
    study_dir = Path(study_dir)
    starts = target_points(study_dir, entries)
    paths = {}
    for entry in entries:
        if entry.kind == "run":
            path = run_path(study_dir, entry, starts.get(entry.forget_split))
            if path:
                paths[entry.name] = path
    return paths


def fq_at_matched_utility(path: list[Point], fraction: float = MATCHED_UTILITY_FRACTION) -> float:
    """The best forget quality among the points with model utility >= fraction x the step-0 point's (NaN when
    the path is empty)."""
    if not path or not math.isfinite(path[0].model_utility):
        return math.nan
    floor = fraction * path[0].model_utility
    qualities = [p.forget_quality for p in path if p.model_utility >= floor and math.isfinite(p.forget_quality)]
    return max(qualities) if qualities else math.nan


def mu_at_matched_forgetting(first: list[Point], second: list[Point]) -> tuple[float, float, float]:
    """(level, model utility of `first`, of `second`) at the forget quality both reach (NaN when one is empty)."""

    def best(path: list[Point]) -> float:
        return max((p.forget_quality for p in path if math.isfinite(p.forget_quality)), default=math.nan)

    level = min(best(first), best(second))
    if not math.isfinite(level):
        return math.nan, math.nan, math.nan

    def utility(path: list[Point]) -> float:
        return max(p.model_utility for p in path if math.isfinite(p.forget_quality) and p.forget_quality >= level)

    return level, utility(first), utility(second)
