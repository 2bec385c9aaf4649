"""`index.html`: one self-contained file with the results table, the comparison figures and every run's figures.

Everything is read back from the study folder when rendering: results.csv for the numbers, the PNG files for
the figures (embedded as base64 data URIs, so the one file is the whole report), manifest.json for the runs,
study.yaml for the configuration and timings.json for the stage times. Each number cell carries the exact
value of the CSV in `data-value`, next to the rounded text.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

from geffect.io import atomic_write_text
from geffect.reports.conventions import conventions_html
from geffect.reports.relearn import relearn_html
from geffect.reports.runfiles import read_json
from geffect.reports.tables import (
    COLUMNS,
    NUMBER_COLUMNS,
    SPREAD_NOTE,
    SUMMARY_NUMBER_COLUMNS,
    format_number,
    format_spread,
    method_summary,
    read_manifest,
    read_results_csv,
)
from geffect.runfolder import RunFolder
from geffect.studyfolder import StudyFolder

COLUMN_TITLES = {
    "forget_quality": "KS-test p-value of forget truth ratios against the retain model (higher = closer to retraining)",
    "model_utility": "harmonic mean of Prob, ROUGE-L and truth ratio on retain, real authors and world facts",
    "forget_truth_ratio": "mean min(tr, 1/tr) on the forget set",
    "forget_prob": "mean answer probability on the forget set",
    "forget_rouge": "ROUGE-L recall of greedy answers on the forget set",
    "extraction_strength": "teacher-forced extraction strength on the forget set",
    "final_e_u": "unlearning G-effect at the last measured step (negative = removes knowledge)",
    "final_e_r": "retaining G-effect at the last measured step (non-negative = keeps retained data)",
    "fq_at_matched_utility": "best forget quality among the run's points with model utility >= 0.9 of the target's "
    "(points subset)",
    "points": "evaluation points of the run's path, the target (step 0) included",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f0f0f0; }
td.label { text-align: left; white-space: nowrap; }
tr.target td, tr.retain td { background: #f7f7e8; }
figure { display: inline-block; margin: 6px; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 12px; color: #555; }
details { margin: 8px 0; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
"""


def _img(study_dir: Path, path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    relative = path.relative_to(study_dir).as_posix()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" data-file="{html.escape(relative)}">'
        f"<figcaption>{html.escape(caption)} <code>{html.escape(relative)}</code></figcaption></figure>"
    )


def _figures(study_dir: Path, folder: Path) -> str:
    if not folder.is_dir():
        return '<p class="note">no figures</p>'
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        return '<p class="note">no figures</p>'
    return "\n".join(_img(study_dir, png, png.stem.replace("_", " ")) for png in pngs)


def _results_table(rows: list[dict]) -> str:
    head = "".join(f'<th title="{html.escape(COLUMN_TITLES.get(c, c))}">{html.escape(c)}</th>' for c in COLUMNS)
    body = []
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row[column]
            if column in NUMBER_COLUMNS:
                exact = "" if math.isnan(value) else repr(value)
                cells.append(
                    f'<td data-column="{column}" data-value="{exact}">{html.escape(format_number(value))}</td>'
                )
            else:
                cells.append(f'<td class="label" data-column="{column}">{html.escape(str(value))}</td>')
        body.append(
            f'<tr class="{html.escape(row["kind"])}" data-name="{html.escape(row["name"])}">{"".join(cells)}</tr>'
        )
    return f'<div class="scroll"><table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _summary_table(rows: list[dict]) -> str:
    columns = ("method", "forget_split", "params", "seeds", *SUMMARY_NUMBER_COLUMNS)
    head = "".join(f'<th title="{html.escape(COLUMN_TITLES.get(c, c))}">{html.escape(c)}</th>' for c in columns)
    body = []
    for entry in method_summary(rows):
        cells = []
        for column in columns:
            if column in SUMMARY_NUMBER_COLUMNS:
                cells.append(f'<td data-summary="{column}">{html.escape(format_spread(entry[column]))}</td>')
            else:
                cells.append(f'<td class="label">{html.escape(str(entry[column]))}</td>')
        body.append(f'<tr class="{html.escape(entry["kind"])}">{"".join(cells)}</tr>')
    return (
        f'<p class="note">{html.escape(SPREAD_NOTE)}</p><div class="scroll"><table id="per-method"><thead><tr>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _claims(study_dir: Path) -> str:
    """The claims of claims.json: claim, quantity, verdict, and the values per seed."""
    path = study_dir / "claims.json"
    if not path.exists():
        return ""
    items = []
    for claim in read_json(path)["claims"]:
        seeds = "".join(
            f"<li>{html.escape(s['forget_split'])} seed {s['seed']}: {'holds' if s['holds'] else 'does not hold'} "
            f"({html.escape(', '.join(f'{k} {format_number(v)}' for k, v in s['values'].items()))})</li>"
            for s in claim["per_seed"]
        )
        items.append(
            f'<li data-claim="{claim["id"]}"><b>{html.escape(claim["claim"])}</b>: {html.escape(claim["verdict"])}.'
            f'<br><span class="note">Quantity: {html.escape(claim["quantity"])}.</span><ul>{seeds}</ul></li>'
        )
    return f'<h2>The paper\'s claims</h2><p class="note">From <code>claims.json</code>.</p><ol>{"".join(items)}</ol>'


def _timings(study_dir: Path) -> str:
    path = study_dir / StudyFolder.TIMINGS
    if not path.exists():
        return ""
    stages = read_json(path).get("stages", [])
    rows = "".join(
        f'<tr><td class="label">{html.escape(s["stage"])}</td><td class="label">{html.escape(s["name"])}</td>'
        f'<td data-value="{s["seconds"]!r}">{s["seconds"]:.1f}</td><td class="label">{"cached" if s.get("cached") else "ran"}</td></tr>'
        for s in stages
    )
    return (
        '<h2>Stage times</h2><table id="timings"><thead><tr><th>stage</th><th>item</th><th>seconds</th><th>status</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def render_index(study_dir: str | Path, title: str = "geffect study report") -> Path:
    """Write STUDY/index.html from the files in the study folder; returns its path."""
    study_dir = Path(study_dir)
    rows = read_results_csv(study_dir / StudyFolder.RESULTS_CSV)
    config = (
        (study_dir / StudyFolder.CONFIG).read_text(encoding="utf-8")
        if (study_dir / StudyFolder.CONFIG).exists()
        else ""
    )
    runs = [entry for entry in read_manifest(study_dir) if entry.kind == "run" and entry.run_dir]
    run_sections = []
    for entry in runs:
        params = ", ".join(f"{k}={v}" for k, v in (entry.params or {}).items()) or "defaults"
        run_sections.append(
            f'<section class="run" id="run-{html.escape(entry.name)}"><h3>{html.escape(entry.name)}</h3>'
            f'<p class="note">method {html.escape(entry.method)}, {html.escape(params)}, {html.escape(entry.forget_split)}, '
            f"seed {entry.seed}; files in <code>{html.escape(entry.run_dir)}</code></p>"
            f"{_figures(study_dir, RunFolder(study_dir / entry.run_dir).figures_dir)}</section>"
        )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Generated {generated} from the files in this folder. G-effect sign convention: e = ∇R·∇L<sub>u</sub>;
e<sub>u</sub> &lt; 0 removes the forget set's knowledge, e<sub>r</sub> ≥ 0 keeps the retain set's. Hover a column
name for its definition; exact values are in <code>results.csv</code>.</p>
<h2>Results per method</h2>
{_summary_table(rows)}
{_claims(study_dir)}
<h2>Results per run</h2>
{_results_table(rows)}
<h2>Comparison</h2>
{_figures(study_dir, study_dir / StudyFolder.FIGURES)}
{relearn_html(study_dir)}
<h2>Per-method G-effects</h2>
{"".join(run_sections) or '<p class="note">no unlearning runs</p>'}
{conventions_html(study_dir)}
{_timings(study_dir)}
<h2>Configuration</h2>
<details><summary>study.yaml (resolved)</summary><pre>{html.escape(config)}</pre></details>
</body></html>
"""
    return atomic_write_text(study_dir / StudyFolder.INDEX, page)
