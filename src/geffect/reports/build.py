"""The whole report of a study folder, in dependency order: run figures, tables, comparison figures, index.html."""

from __future__ import annotations

from pathlib import Path

from geffect.reports.compare import write_comparison_figures
from geffect.reports.geffect_plots import plot_run
from geffect.reports.html import render_index
from geffect.reports.tables import read_manifest, write_tables


def write_report(study_dir: str | Path, title: str = "geffect study report") -> dict[str, Path]:
    """Render everything from the files in `study_dir`; returns the main outputs by name."""
    study_dir = Path(study_dir)
    for entry in read_manifest(study_dir):
        if entry.kind == "run" and entry.run_dir and (study_dir / entry.run_dir).is_dir():
            plot_run(study_dir / entry.run_dir)
    csv_path, md_path = write_tables(study_dir)
    figures = write_comparison_figures(study_dir)
    index = render_index(study_dir, title=title)
    return {"results_csv": csv_path, "results_md": md_path, **figures, "index": index}
