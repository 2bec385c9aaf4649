"""Tables, figures and index.html rendered from a synthetic study folder written by the test."""

from __future__ import annotations

import base64
import csv
import json
import math
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import geffect.cli.main as cli_main
from geffect.io import read_jsonl
from geffect.reports.build import write_report
from geffect.reports.geffect_plots import instance_points, measured_risk_change, plot_run, weight_bins
from geffect.reports.runfiles import read_run
from geffect.reports.tables import (
    COLUMNS,
    SUMMARY_COLUMNS,
    build_rows,
    method_summary,
    runs_markdown,
    summary_markdown,
    to_markdown,
    write_tables,
)
from report_fixtures import make_study, write_run

RUN_FIGURES = {
    "effects_vs_step",
    "groups_vs_step",
    "layer_heatmap",
    "instances",
    "instance_scatter",
    "predicted_vs_measured",
}


def assert_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 1.0, f"{path} is blank"
    return image.size


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("study")
    summaries = make_study(root)
    write_report(root, title="test study")
    return root, summaries


def test_results_csv_holds_exactly_the_numbers_of_the_files(study):
    root, summaries = study
    with open(root / "results.csv", newline="", encoding="utf-8") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["target", "retain", "forget10-GA-seed0", "forget10-NPO+KL-seed0"]
    assert list(next(iter(rows.values()))) == list(COLUMNS)
    for name, summary in summaries.items():
        for column, key in SUMMARY_COLUMNS.items():
            assert float(rows[name][column]) == summary[key]  # full precision round trip
    for name in ("forget10-GA-seed0", "forget10-NPO+KL-seed0"):
        last = read_jsonl(root / "runs" / name / "geffect.jsonl")[-1]
        assert float(rows[name]["final_e_u"]) == last["e_u"]["total"]
        assert float(rows[name]["final_e_r"]) == last["e_r"]["total"]
    assert rows["target"]["final_e_u"] == "" and rows["retain"]["kind"] == "retain"
    assert json.loads(rows["forget10-NPO+KL-seed0"]["params"]) == {"beta": 0.1}


def test_markdown_rounds_to_three_significant_digits():
    rows = [
        {
            "name": "r",
            "kind": "run",
            "method": "NPO",
            "forget_split": "forget10",
            "seed": 0,
            "params": "",
            "forget_quality": 1.23456e-7,
            "model_utility": 0.56789,
            "forget_truth_ratio": math.nan,
            "forget_prob": 1.0,
            "forget_rouge": 0.0,
            "extraction_strength": 0.5,
            "final_e_u": -12345.6,
            "final_e_r": 0.001234,
            "fq_at_matched_utility": 2e-5,
            "points": 4.0,
        }
    ]
    table = runs_markdown(rows).splitlines()
    assert table[0].startswith("| method | forget_split |")
    assert (
        table[2] == "| NPO | forget10 | 0 |  | 1.23e-07 | 0.568 | — | 1 | 0 | 0.5 | -1.23e+04 | 0.00123 | 2e-05 | 4 |"
    )
    assert "## Per method" in to_markdown(rows) and "## Per run" in to_markdown(rows)


def test_per_method_rows_show_mean_and_min_max_over_seeds():
    """Arithmetic mean for utilities and G-effects, geometric mean for p-values (they span decades); min and max."""
    base = {"kind": "run", "method": "GA", "forget_split": "forget10", "params": ""}
    values = [(1e-8, 0.5, -3.0), (1e-4, 0.7, -1.0), (1e-6, 0.9, 1.0)]
    rows = []
    for seed, (fq, mu, e_u) in enumerate(values):
        row = {column: math.nan for column in COLUMNS if column not in base}
        row.update(base, name=f"r{seed}", seed=seed, forget_quality=fq, model_utility=mu, final_e_u=e_u)
        rows.append(row)
    (entry,) = method_summary(rows)
    assert entry["seeds"] == 3
    assert entry["model_utility"] == (pytest.approx(0.7), 0.5, 0.9)
    assert entry["final_e_u"] == (pytest.approx(-1.0), -3.0, 1.0)
    assert entry["forget_quality"] == (pytest.approx(1e-6), 1e-8, 1e-4)  # (1e-8 * 1e-4 * 1e-6) ** (1/3)
    assert entry["forget_prob"] is None  # no finite value
    line = summary_markdown(rows).splitlines()[2]
    assert "| GA | forget10 |  | 3 | 1e-06 [1e-08, 0.0001] | 0.7 [0.5, 0.9] |" in line


def test_rows_skip_entries_whose_evaluation_is_missing(tmp_path):
    make_study(tmp_path)
    (tmp_path / "runs/forget10-GA-seed0/eval/TOFU_SUMMARY.json").unlink()
    assert [row["name"] for row in build_rows(tmp_path)] == ["target", "retain", "forget10-NPO+KL-seed0"]
    csv_path, md_path = write_tables(tmp_path)
    assert csv_path.read_text().count("\n") == 4 and md_path.exists()


def test_every_run_gets_every_figure_as_a_valid_png(study):
    root, _ = study
    for name, weighted in (("forget10-GA-seed0", False), ("forget10-NPO+KL-seed0", True)):
        figures = {p.stem for p in (root / "runs" / name / "figures").glob("*.png")}
        assert figures == RUN_FIGURES
        for png in (root / "runs" / name / "figures").glob("*.png"):
            width, height = assert_png(png)
            assert width > 300 and height > 200
    for png in ("quality_vs_utility", "effects_all_runs"):
        assert_png(root / "figures" / f"{png}.png")


def test_figures_that_the_logs_do_not_support_are_left_out(tmp_path):
    run = tmp_path / "run"
    write_run(run, seed=3)
    lines = read_jsonl(run / "geffect.jsonl")
    (run / "geffect.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in line.items() if "items" not in k}) + "\n" for line in lines)
    )
    assert set(plot_run(run)) == RUN_FIGURES - {"instances", "instance_scatter"}


def test_instance_points_pair_items_with_their_weights(tmp_path):
    records = [
        {"step": 3, "items_u": {"7": -1.5, "9": 2.0}, "items_r": {"500": 0.25}, "weights": {"item": {"7": 0.5}}},
        {"step": 4, "items_u": {"7": -1.0}, "weights": {"token_mean": {"7": 0.75}}},
    ]
    forget = instance_points(records, "u")
    assert forget[0] == (3.0, "7", -1.5, 0.5)
    assert forget[1][:3] == (3.0, "9", 2.0) and math.isnan(forget[1][3])
    assert forget[2] == (4.0, "7", -1.0, 0.75)
    assert [p[:3] for p in instance_points(records, "r")] == [(3.0, "500", 0.25)]
    index, edges = weight_bins(np.array([0.0, 0.1, 0.5, 1.0]), count=2)
    assert edges.tolist() == [0.0, 0.5, 1.0] and index.tolist() == [0, 0, 1, 1]


def test_measured_risk_change_is_aligned_with_the_prediction(tmp_path):
    run = tmp_path / "run"
    write_run(run, seed=1, steps=4)
    steps, change, what = measured_risk_change(read_run(run), "u")
    # risk logged at step t = before step t's update = after step t-1; fixture: 1 + 0.3 t
    assert steps.tolist() == [0, 1, 2, 3]
    assert np.allclose(change, [0.0, 0.3, 0.6, 0.9])
    assert "batch" in what


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.cells: list[dict] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "td" and "data-value" in attrs and "data-column" in attrs:
            self._cell = {**attrs, "text": ""}

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None


def test_index_html_embeds_every_figure_and_shows_the_files_numbers(study):
    root, summaries = study
    parser = _Images()
    parser.feed((root / "index.html").read_text(encoding="utf-8"))
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    assert {img["data-file"] for img in parser.images} == on_disk
    assert len(on_disk) == 2 + 2 * len(RUN_FIGURES)
    for img in parser.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix) :])
        assert data == (root / img["data-file"]).read_bytes()
        Image.open(BytesIO(data)).verify()
    # Number cells: exact values from the TOFU_SUMMARY.json files, rounded text beside them.
    by_column = {}
    for cell in parser.cells:
        by_column.setdefault(cell["data-column"], []).append(cell)
    order = ["target", "retain", "forget10-GA-seed0", "forget10-NPO+KL-seed0"]
    for column, key in SUMMARY_COLUMNS.items():
        values = [float(c["data-value"]) for c in by_column[column]]
        assert values == [summaries[name][key] for name in order]
        assert [c["text"] for c in by_column[column]] == [f"{v:.3g}" for v in values]
    last_e_u = [read_jsonl(root / "runs" / name / "geffect.jsonl")[-1]["e_u"]["total"] for name in order[2:]]
    assert [c["data-value"] for c in by_column["final_e_u"]] == ["", "", *map(repr, last_e_u)]


def test_plot_command_writes_pngs_and_rejects_a_folder_without_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("plot",))
    run = tmp_path / "run"
    write_run(run, seed=2, steps=3)
    assert cli_main.main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert {Path(p).stem for p in printed} == RUN_FIGURES
    assert all(Path(p).parent == tmp_path / "figs" for p in printed)
    (tmp_path / "empty").mkdir()
    assert cli_main.main(["plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither log.jsonl nor geffect.jsonl" in err


def test_run_figures_have_labelled_axes_with_units_and_legends(tmp_path, monkeypatch):
    """Each figure `geffect plot` draws, inspected before it is saved: every data axes has an x and a y label, a
    G-effect or risk axis states its unit in parentheses, and a panel with several labelled series has a legend."""
    import geffect.reports.geffect_plots as plots

    figures = {}
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.setdefault(path.stem, fig) and save(fig, path))
    run = tmp_path / "run"
    write_run(run, seed=2)
    plot_run(run)
    assert set(figures) == RUN_FIGURES
    for name, fig in figures.items():
        data_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison]
        assert data_axes, name
        for ax in data_axes:
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: {ax.get_title()!r} lacks an axis label"
            assert "(" in ax.get_ylabel() or "index" in ax.get_ylabel(), (
                f"{name}: y label without unit: {ax.get_ylabel()!r}"
            )
            labelled = [h for h in ax.get_lines() + ax.collections if not h.get_label().startswith("_")]
            if len(labelled) > 1:
                assert ax.get_legend() is not None, f"{name}: {ax.get_title()!r} has several series but no legend"
        for colorbar in [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]:
            assert "(" in colorbar.get_ylabel(), f"{name}: colour bar without unit"
