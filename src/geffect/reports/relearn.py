"""The relearning attack in a study's report: forget quality, forget probability and ROUGE of every run before
and after its attack (STUDY/relearn.csv, a markdown table for results.md) and the before/after figure
(STUDY/figures/relearn.png). Reads RUN/eval/TOFU_SUMMARY.json and RUN/relearn-N/TOFU_SUMMARY.json."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from geffect.evaluation.logs import SUMMARY_FILE
from geffect.reports.figures import save_figure, use_agg
from geffect.reports.runfiles import read_json
from geffect.reports.tables import read_manifest
from geffect.studyfolder import StudyFolder

RELEARN_CSV = "relearn.csv"
FIGURE = "relearn.png"
METRICS = {"forget_quality": "forget_quality", "forget_prob": "forget_Q_A_Prob", "forget_rouge": "forget_Q_A_ROUGE"}


def _value(summary: dict, key: str) -> float:
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def relearn_rows(study_dir: str | Path) -> list[dict]:
    """One row per run and attack size: the metrics before (`*_before`) and after (`*_after`) the attack."""
    study_dir = Path(study_dir)
    rows = []
    for entry in read_manifest(study_dir):
        if entry.kind != "run" or not entry.run_dir or not (study_dir / entry.eval_dir / SUMMARY_FILE).exists():
            continue
        before = read_json(study_dir / entry.eval_dir / SUMMARY_FILE)
        for folder in sorted((study_dir / entry.run_dir).glob("relearn-*"), key=lambda p: int(p.name.split("-")[1])):
            if not (folder / SUMMARY_FILE).exists():
                continue
            after = read_json(folder / SUMMARY_FILE)
            row = {"name": entry.name, "method": entry.method, "seed": entry.seed, "samples": int(folder.name[8:])}
            for column, key in METRICS.items():
                row[f"{column}_before"], row[f"{column}_after"] = _value(before, key), _value(after, key)
            rows.append(row)
    return rows


def relearn_markdown(rows: list[dict]) -> str:
    """The before/after table (empty without attacks)."""
    if not rows:
        return ""
    lines = [
        "## Relearning attack",
        "",
        "| method | seed | N | forget quality before | after | forget prob before | after | forget ROUGE before | after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        values = " | ".join(f"{r[f'{m}_{when}']:.4g}" for m in METRICS for when in ("before", "after"))
        lines.append(f"| {r['method']} | {r['seed']} | {r['samples']} | {values} |")
    return "\n".join(lines) + "\n"


def write_relearn(study_dir: str | Path) -> tuple[str, Path | None]:
    """relearn.csv and figures/relearn.png (when the study attacked its runs); returns (markdown, figure)."""
    study_dir = Path(study_dir)
    rows = relearn_rows(study_dir)
    if not rows:
        return "", None
    path = study_dir / RELEARN_CSV
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return relearn_markdown(rows), _figure(rows, study_dir / StudyFolder.FIGURES / FIGURE)


def _figure(rows: list[dict], path: Path) -> Path:
    """Per method (mean over seeds, seeds as dots): forget probability and forget quality, before -> after."""
    plt = use_agg()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(methods) + 3), 3.6))
    for ax, metric, label in (
        (axes[0], "forget_prob", "forget probability"),
        (axes[1], "forget_quality", "forget quality"),
    ):
        x = np.arange(len(methods))
        for offset, when, color in ((-0.18, "before", "tab:blue"), (0.18, "after", "tab:red")):
            values = [[r[f"{metric}_{when}"] for r in rows if r["method"] == m] for m in methods]
            ax.bar(
                x + offset, [np.nanmean(v) if v else np.nan for v in values], 0.34, color=color, alpha=0.6, label=when
            )
            for i, v in enumerate(values):
                ax.plot([x[i] + offset] * len(v), v, "k.", markersize=3)
        ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{label} before / after relearning", fontsize=9)
        if metric == "forget_quality":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def relearn_html(study_dir: str | Path) -> str:
    """index.html's "Relearning attack" section (empty without attacks)."""
    import html

    rows = relearn_rows(study_dir)
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("method", "seed", "N", "FQ before", "FQ after", "forget prob before",
                                  "forget prob after", "ROUGE before", "ROUGE after")
    )  # fmt: skip
    body = "".join(
        f"<tr><td>{html.escape(str(r['method']))}</td><td>{r['seed']}</td><td>{r['samples']}</td>"
        + "".join(f"<td>{r[f'{m}_{w}']:.4g}</td>" for m in METRICS for w in ("before", "after"))
        + "</tr>"
        for r in rows
    )
    return (
        '<h2>Relearning attack</h2><p class="note">Each run fine-tuned on N forget items after unlearning '
        f"(relearn.csv, figures/{FIGURE}).</p><table><tr>{head}</tr>{body}</table>"
    )
