"""The whole report of a study folder, in dependency order: run figures, claims, tables, comparison figures,
index.html."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from geffect.reports.compare import write_comparison_figures
from geffect.reports.geffect_plots import plot_run
from geffect.reports.html import render_index
from geffect.reports.real_step import plot_real_step
from geffect.reports.relearn import write_relearn
from geffect.reports.runfiles import read_json
from geffect.reports.tables import read_manifest, write_tables
from geffect.study.claims import claims_markdown, write_claims


def write_report(study_dir: str | Path, title: str = "geffect study report") -> dict[str, Path]:
    """Render everything from the files in `study_dir`; returns the main outputs by name."""
    study_dir = Path(study_dir)
    runs = [
        study_dir / entry.run_dir
        for entry in read_manifest(study_dir)
        if entry.kind == "run" and entry.run_dir and (study_dir / entry.run_dir).is_dir()
    ]
    plot_runs(runs)
    claims_path = write_claims(study_dir)
    relearn_md, _ = write_relearn(study_dir)  # before/after the relearning attacks, when the study ran them
    csv_path, md_path = write_tables(study_dir, appendix=claims_markdown(read_json(claims_path)) + relearn_md)
    figures = write_comparison_figures(study_dir)
    index = render_index(study_dir, title=title)
    return {"results_csv": csv_path, "results_md": md_path, "claims": claims_path, **figures, "index": index}


def plot_one_run(run_dir: Path) -> None:
    plot_run(run_dir)
    plot_real_step(run_dir)  # with the tracker's `applied`: u's prediction against e's


RUNS_PER_WORKER = 4  # below this, starting a process (matplotlib's import) costs more than it saves


def plot_runs(run_dirs: list[Path]) -> None:
    """Every run's figures. Drawing them is most of a report's time (the demo: 84 figures, 40 s on one core)
    and each run's are independent, so a study with many runs draws them in one process per core."""
    workers = min(os.cpu_count() or 1, len(run_dirs) // RUNS_PER_WORKER)
    if workers < 2:
        for run_dir in run_dirs:
            plot_one_run(run_dir)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(plot_one_run, run_dirs))  # list(): a worker's exception is raised here
