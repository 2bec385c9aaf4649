"""The report's "Evaluation conventions" section: which convention (evaluation/conventions.py) each of the
study's evaluations was scored under, read back from their TOFU_SUMMARY.json, and any warning that a log was
compared with a retain log made under another one."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from geffect.evaluation.logs import SUMMARY_FILE
from geffect.reports.runfiles import read_json


def conventions_html(study_dir: str | Path) -> str:
    study_dir = Path(study_dir)
    by_convention: dict[str, list[str]] = defaultdict(list)
    warnings = []
    for path in sorted(study_dir.rglob(SUMMARY_FILE)):
        summary = read_json(path)
        record = summary.get("conventions") or {}
        rules = ", ".join(f"{k} {v}" for k, v in record.items() if k != "name")
        label = f"{record.get('name', 'unrecorded')}" + (f" ({rules})" if rules else "")
        by_convention[label].append(str(path.parent.relative_to(study_dir)))
        if summary.get("convention_warning"):
            warnings.append(summary["convention_warning"])
    if not by_convention:
        return ""
    items = "".join(
        f"<li><b>{html.escape(label)}</b>: {len(paths)} evaluation(s), e.g. <code>{html.escape(paths[0])}</code></li>"
        for label, paths in sorted(by_convention.items())
    )
    warned = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in warnings)
    return (
        '<h2>Evaluation conventions</h2><p class="note">From each evaluation\'s <code>TOFU_SUMMARY.json</code> '
        "(<code>docs/presets.md</code> says what each convention computes).</p>"
        f"<ul>{items}{warned}</ul>"
    )
