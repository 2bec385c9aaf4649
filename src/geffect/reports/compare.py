"""Comparison figures across the runs of a study, read back from the study folder.

- forget quality against model utility (one point per row of results.csv, every seed; the retain model is
  the ideal);
- each run's path in that plane, from its points along the run (reports/paths.py), every seed drawn;
- e_u and e_r of every run against step (from each run's geffect.jsonl), a colour per method, a line style
  per seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from geffect.reports.figures import EFFECT_LABEL, EFFECT_UNIT, STEP_LABEL, save_figure, step_series, use_agg, zero_line
from geffect.reports.paths import MATCHED_UTILITY_FRACTION, study_paths
from geffect.reports.runfiles import EFFECT_KEYS, effect_total, read_run
from geffect.reports.tables import read_manifest, read_results_csv
from geffect.studyfolder import StudyFolder


def run_colour(cmap, index: int):
    """Distinct colours for up to 20 runs: the 10 dark tab20 shades first, then the 10 light ones."""
    return cmap((2 * index) % 20 + (2 * index // 20) % 2)


def point_label(row: dict) -> str:
    """Short label: the method and its configured hyper-parameters; target/retain rows by role and split."""
    if row["kind"] != "run":
        return f"{row['kind']} ({row['forget_split']})"
    params = json.loads(row["params"]) if row.get("params") else {}
    settings = ", ".join(f"{k}={v:g}" for k, v in params.items())
    return row["method"] + (f" ({settings})" if settings else "")


KIND_STYLE = {"target": ("s", "black"), "retain": ("*", "tab:green")}
FQ_FLOOR = 1e-300  # log axis: a p-value of exactly 0 is drawn at the floor


def plot_quality_vs_utility(rows: list[dict], path: Path, title: str = "") -> Path | None:
    points = [r for r in rows if math.isfinite(r["model_utility"]) and math.isfinite(r["forget_quality"])]
    if not points:
        return None
    plt = use_agg()
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    cmap = plt.get_cmap("tab20")
    methods = sorted({point_label(r) for r in points if r["kind"] == "run"})
    labelled = set()
    for row in points:
        y = max(row["forget_quality"], FQ_FLOOR)
        label = point_label(row)
        if row["kind"] in KIND_STYLE:
            marker, colour = KIND_STYLE[row["kind"]]
            ax.scatter(row["model_utility"], y, marker=marker, s=90, color=colour, zorder=3)
            ax.annotate(label, (row["model_utility"], y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            continue
        colour = run_colour(cmap, methods.index(label))
        # every seed is a point; the method is named once, in the legend
        ax.scatter(row["model_utility"], y, s=40, color=colour, zorder=3, label=None if label in labelled else label)
        labelled.add(label)
    if labelled:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="one point per seed")
    ax.set_yscale("log")
    ax.set(
        xlabel="model utility (harmonic mean of 9 TOFU scores, higher is better)",
        ylabel="forget quality (KS-test p-value, log scale, higher is better)",
        title=title or "Forget quality against model utility",
    )
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)


def plot_effects_all_runs(study_dir: Path, path: Path) -> Path | None:
    """e_u and e_r of every unlearning run against step, symmetric-log y axis (methods differ by decades)."""
    runs = [
        read_run(study_dir / e.run_dir)
        for e in read_manifest(study_dir)
        if e.kind == "run" and e.run_dir and (study_dir / e.run_dir).is_dir()
    ]
    runs = [run for run in runs if run.geffect]
    if not runs:
        return None
    by_name = {e.name: e for e in read_manifest(study_dir) if e.kind == "run"}
    methods = sorted({by_name[run.name].method for run in runs if run.name in by_name})
    seeds = sorted({by_name[run.name].seed for run in runs if run.name in by_name})
    plt = use_agg()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True, layout="constrained")
    cmap = plt.get_cmap("tab20")
    for ax, key in zip(axes, EFFECT_KEYS):
        magnitudes = []
        for index, run in enumerate(runs):
            entry = by_name.get(run.name)
            steps, values = step_series(run.geffect, lambda r, k=key: effect_total(r, k))
            magnitudes.extend(np.abs(values[np.isfinite(values)]))
            colour = run_colour(cmap, methods.index(entry.method) if entry else index)
            style = ("-", "--", ":", "-.")[(seeds.index(entry.seed) if entry else 0) % 4]
            ax.plot(steps, values, color=colour, linestyle=style, label=run.name, linewidth=1.1)
        positive = [m for m in magnitudes if m > 0]
        # linear within the smallest decade that matters, logarithmic beyond it
        ax.set_yscale("symlog", linthresh=float(np.percentile(positive, 10)) if positive else 1.0)
        zero_line(ax)
        ax.set(xlabel=STEP_LABEL, ylabel=f"{EFFECT_UNIT}, symmetric log scale", title=EFFECT_LABEL[key])
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5), ncol=1 + len(runs) // 24)
    fig.suptitle("G-effects of all methods per step (a colour per method, a line style per seed)")
    return save_figure(fig, path)


def plot_paths(study_dir: Path, path: Path) -> Path | None:
    """Each run's path in the forget quality / model utility plane (points along the run), every seed a line;
    the dashed line is the matched-utility level (0.9 of the target's model utility on the points subset)."""
    entries = read_manifest(study_dir)
    paths = study_paths(study_dir, entries)
    if not paths:
        return None
    by_name = {e.name: e for e in entries}
    methods = sorted({by_name[name].method for name in paths})
    plt = use_agg()
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    cmap = plt.get_cmap("tab20")
    labelled = set()
    for name, points in paths.items():
        method = by_name[name].method
        x = [p.model_utility for p in points]
        y = [max(p.forget_quality, FQ_FLOOR) for p in points]
        colour = run_colour(cmap, methods.index(method))
        ax.plot(x, y, color=colour, marker=".", linewidth=1.0, alpha=0.85, label=None if method in labelled else method)
        ax.scatter(x[-1:], y[-1:], color=colour, marker="o", s=30, zorder=3)  # the end point
        labelled.add(method)
    start = next(iter(paths.values()))[0]
    ax.scatter([start.model_utility], [max(start.forget_quality, FQ_FLOOR)], marker="s", s=80, color="black", zorder=4)
    ax.annotate(
        "target (step 0)",
        (start.model_utility, max(start.forget_quality, FQ_FLOOR)),
        xytext=(4, 3),
        textcoords="offset points",
        fontsize=7,
    )
    ax.axvline(MATCHED_UTILITY_FRACTION * start.model_utility, color="0.4", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set(
        xlabel="model utility (points subset)",
        ylabel="forget quality (points subset, log scale)",
        title="Paths along the runs: every seed a line from the target to the end point (dot)",
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, path)


def write_comparison_figures(study_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    study_dir = Path(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir / StudyFolder.FIGURES
    written = {}
    results = study_dir / StudyFolder.RESULTS_CSV
    if results.exists():
        figure = plot_quality_vs_utility(read_results_csv(results), out / "quality_vs_utility.png")
        if figure is not None:
            written["quality_vs_utility"] = figure
    figure = plot_effects_all_runs(study_dir, out / "effects_all_runs.png")
    if figure is not None:
        written["effects_all_runs"] = figure
    figure = plot_paths(study_dir, out / "quality_utility_paths.png")
    if figure is not None:
        written["quality_utility_paths"] = figure
    return written
