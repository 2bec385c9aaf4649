"""The results table of a study: one row per unlearning run plus the target and retain rows.

Rows are built from the files a study wrote: `manifest.json` (which runs exist and where), each entry's
`TOFU_SUMMARY.json` and, for unlearning runs, the last line of `geffect.jsonl`. The CSV keeps full precision
(Python's shortest round-trip repr); the Markdown rounds to three significant digits for reading.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from geffect.errors import UsageError
from geffect.evaluation.logs import SUMMARY_FILE
from geffect.io import atomic_write_text
from geffect.reports.runfiles import as_float, final_effects, read_json, read_run
from geffect.studyfolder import StudyFolder

# Column name -> key of TOFU_SUMMARY.json it is read from.
SUMMARY_COLUMNS: dict[str, str] = {
    "forget_quality": "forget_quality",
    "model_utility": "model_utility",
    "forget_truth_ratio": "forget_truth_ratio",
    "forget_prob": "forget_Q_A_Prob",
    "forget_rouge": "forget_Q_A_ROUGE",
    "extraction_strength": "extraction_strength",
}
EFFECT_COLUMNS: dict[str, str] = {"final_e_u": "e_u", "final_e_r": "e_r"}
PATH_COLUMNS = ("fq_at_matched_utility", "points")  # from the points along the run (reports/paths.py)
LABEL_COLUMNS = ("name", "kind", "method", "forget_split", "seed", "params")
NUMBER_COLUMNS = (*SUMMARY_COLUMNS, *EFFECT_COLUMNS, *PATH_COLUMNS)
COLUMNS = (*LABEL_COLUMNS, *NUMBER_COLUMNS)


@dataclass
class ManifestEntry:
    """One row of the study: `kind` is target, retain or run; paths are relative to the study folder."""

    name: str
    kind: str
    forget_split: str
    eval_dir: str
    method: str = ""
    seed: int | None = None
    params: dict | None = None
    run_dir: str | None = None
    points_dir: str | None = None  # the points along the run (the target's: on the points subset)

    @classmethod
    def from_dict(cls, data: dict) -> "ManifestEntry":
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__ if key in data})


def read_manifest(study_dir: str | Path) -> list[ManifestEntry]:
    path = Path(study_dir) / StudyFolder.MANIFEST
    if not path.exists():
        raise UsageError(f"{path} is missing; pass the --out folder of a finished study")
    return [ManifestEntry.from_dict(entry) for entry in read_json(path)["entries"]]


def build_rows(study_dir: str | Path) -> list[dict]:
    """One dict per manifest entry whose evaluation exists, with every column of COLUMNS (NaN when missing)."""
    from geffect.reports.paths import fq_at_matched_utility, study_paths

    study_dir = Path(study_dir)
    entries = read_manifest(study_dir)
    paths = study_paths(study_dir, entries)
    rows = []
    for entry in entries:
        summary_path = study_dir / entry.eval_dir / SUMMARY_FILE
        if not summary_path.exists():
            continue
        summary = read_json(summary_path)
        row = {
            "name": entry.name,
            "kind": entry.kind,
            "method": entry.method or entry.kind,
            "forget_split": entry.forget_split,
            "seed": "" if entry.seed is None else entry.seed,
            "params": json.dumps(entry.params or {}, sort_keys=True) if entry.params else "",
        }
        row.update({column: as_float(summary.get(key)) for column, key in SUMMARY_COLUMNS.items()})
        effects = final_effects(read_run(study_dir / entry.run_dir)) if entry.run_dir else {}
        row.update({column: effects.get(key, math.nan) for column, key in EFFECT_COLUMNS.items()})
        path = paths.get(entry.name, [])
        row["fq_at_matched_utility"] = fq_at_matched_utility(path)
        row["points"] = float(len(path)) if path else math.nan
        rows.append(row)
    return rows


def _csv_cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[column]) for column in COLUMNS])
    return buffer.getvalue()


def format_number(value: float) -> str:
    """Three significant digits; missing values as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}"


MARKDOWN_COLUMNS = ("method", "forget_split", "seed", "params", *NUMBER_COLUMNS)
# p-values span decades: their centre over seeds is the geometric mean, the others' the arithmetic mean
GEOMETRIC_COLUMNS = ("forget_quality", "fq_at_matched_utility")
SUMMARY_NUMBER_COLUMNS = tuple(c for c in NUMBER_COLUMNS if c != "points")
SPREAD_NOTE = (
    "Per method over its seeds: mean [min, max] (forget quality and forget quality at matched utility: geometric "
    "mean, as p-values span decades). Forget quality at matched utility: the best forget quality among a run's "
    "points along the run whose model utility is at least 0.9 of the target's, all scored on the points subset "
    "(the first eval.points_ds_size items of each set, the same for every run)."
)


def _centre(column: str, values: list[float]) -> float:
    if column in GEOMETRIC_COLUMNS:
        if any(v <= 0 for v in values):
            return min(values)  # a p-value of 0 pulls the geometric mean to 0
        return float(math.exp(sum(math.log(v) for v in values) / len(values)))
    return sum(values) / len(values)


def method_summary(rows: list[dict]) -> list[dict]:
    """One row per method (and forget split and params) over its seeds: `seeds`, then per number column
    (mean, min, max) of its finite values, None when it has none. Target and retain rows pass through."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["method"], row["forget_split"], row["params"]), []).append(row)
    summary = []
    for (kind, method, split, params), members in groups.items():
        seeds = len(members) if kind == "run" else ""  # the target and retain rows are no seeds
        entry = {"kind": kind, "method": method, "forget_split": split, "params": params, "seeds": seeds}
        for column in SUMMARY_NUMBER_COLUMNS:
            values = [r[column] for r in members if isinstance(r[column], float) and math.isfinite(r[column])]
            entry[column] = (_centre(column, values), min(values), max(values)) if values else None
        summary.append(entry)
    return summary


def format_spread(value: tuple[float, float, float] | None) -> str:
    if value is None:
        return "—"
    centre, low, high = value
    if low == high:
        return format_number(centre)
    return f"{format_number(centre)} [{format_number(low)}, {format_number(high)}]"


def summary_markdown(rows: list[dict]) -> str:
    columns = ("method", "forget_split", "params", "seeds", *SUMMARY_NUMBER_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in method_summary(rows):
        cells = [
            format_spread(entry[c]) if c in SUMMARY_NUMBER_COLUMNS else str(entry[c]).replace("|", "\\|")
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runs_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for row in rows:
        cells = [
            format_number(row[c]) if c in NUMBER_COLUMNS else str(row[c]).replace("|", "\\|") for c in MARKDOWN_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict]) -> str:
    """results.md: the per-method table (mean and spread over seeds), then one row per run."""
    return f"## Per method\n\n{SPREAD_NOTE}\n\n{summary_markdown(rows)}\n## Per run\n\n{runs_markdown(rows)}"


def read_results_csv(path: str | Path) -> list[dict]:
    """Rows of results.csv with the number columns as floats (NaN for empty cells)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in NUMBER_COLUMNS:
            row[column] = float(row[column]) if row.get(column) not in (None, "") else math.nan
    return rows


def write_tables(study_dir: str | Path, appendix: str = "") -> tuple[Path, Path]:
    """Write results.csv and results.md (with `appendix` at its end, e.g. the claims) into the study folder,
    from its files; returns both paths."""
    study_dir = Path(study_dir)
    rows = build_rows(study_dir)
    markdown = to_markdown(rows) + (f"\n{appendix}" if appendix else "")
    return (
        atomic_write_text(study_dir / StudyFolder.RESULTS_CSV, to_csv(rows)),
        atomic_write_text(study_dir / StudyFolder.RESULTS_MD, markdown),
    )
