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
LABEL_COLUMNS = ("name", "kind", "method", "forget_split", "seed", "params")
NUMBER_COLUMNS = (*SUMMARY_COLUMNS, *EFFECT_COLUMNS)
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
    study_dir = Path(study_dir)
    rows = []
    for entry in read_manifest(study_dir):
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


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for row in rows:
        cells = [
            format_number(row[c]) if c in NUMBER_COLUMNS else str(row[c]).replace("|", "\\|") for c in MARKDOWN_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_results_csv(path: str | Path) -> list[dict]:
    """Rows of results.csv with the number columns as floats (NaN for empty cells)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in NUMBER_COLUMNS:
            row[column] = float(row[column]) if row.get(column) not in (None, "") else math.nan
    return rows


def write_tables(study_dir: str | Path) -> tuple[Path, Path]:
    """Write results.csv and results.md into the study folder, from its files; returns both paths."""
    study_dir = Path(study_dir)
    rows = build_rows(study_dir)
    return (
        atomic_write_text(study_dir / StudyFolder.RESULTS_CSV, to_csv(rows)),
        atomic_write_text(study_dir / StudyFolder.RESULTS_MD, to_markdown(rows)),
    )
