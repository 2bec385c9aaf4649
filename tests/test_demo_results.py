"""The README's demo block is written from files: bench_demo's wall-clock summary and scripts/demo_results.py's
lines read back from it (no time in the README is typed by hand)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


STAGES = [
    {"stage": "benchmark", "name": "builtin", "seconds": 0.5, "cached": False},
    {"stage": "finetune", "name": "retain95", "seconds": 300.0, "cached": False, "side_by_side": True},
    {"stage": "finetune", "name": "full", "seconds": 310.0, "cached": False, "side_by_side": True},
    {"stage": "evaluate", "name": "target", "seconds": 6.0, "cached": False},
    {"stage": "evaluate", "name": "run-a", "seconds": 12.0, "cached": False, "side_by_side": True},
    {"stage": "evaluate", "name": "run-b", "seconds": 13.0, "cached": False, "side_by_side": True},
    {"stage": "reference", "name": "forget05", "seconds": 8.0, "cached": False},
    {"stage": "reference", "name": "forget05-points", "seconds": 2.0, "cached": False},
    {"stage": "unlearn", "name": "a", "seconds": 20.0, "cached": True},
    {"stage": "report", "name": "index.html", "seconds": 30.0, "cached": False},
]
SIDE_BY_SIDE = [
    {"stage": "finetune", "stages": 2, "workers": 2, "seconds": 315.0},
    {"stage": "evaluate", "stages": 2, "workers": 2, "seconds": 13.5},
]


def test_wall_summary_takes_side_by_side_groups_by_their_wall_clock():
    bench = _load("benchmarks/bench_demo.py")
    summary = bench.wall_summary(STAGES, SIDE_BY_SIDE, [4.0, 5.0], total=400.0)
    # one after the other: the stages' sum (cached ones cost nothing); side by side: the group's wall clock
    wall = summary["wall_by_stage"]
    assert wall == {"benchmark": 0.5, "reference": 10.0, "report": 30.0, "finetune": 315.0, "evaluate": 19.5}
    assert summary["process_seconds_by_stage"]["finetune"] == 610.0
    assert summary["points"] == {"count": 2, "process_seconds": 9.0}
    assert summary["total_seconds"] == 400.0 and summary["budget_seconds"] == 900


@pytest.mark.parametrize("total, budget, verdict", [(400.0, 900, "within"), (1000.0, 900, "over"), (1000.0, None, "")])
def test_demo_results_quotes_the_measured_wall_time(tmp_path, total, budget, verdict):
    bench = _load("benchmarks/bench_demo.py")
    results = _load("scripts/demo_results.py")
    assert results.wall_time_lines(tmp_path) == []  # a folder bench_demo did not time says nothing
    summary = bench.wall_summary(STAGES, SIDE_BY_SIDE, [4.0, 5.0], total=total, budget=budget)
    (tmp_path / bench.BENCH_FILE).write_text(json.dumps(summary), encoding="utf-8")
    (line,) = results.wall_time_lines(tmp_path)
    said = f", {verdict} the 15-minute budget" if verdict else ""  # another study than the demo has no budget
    assert f"{total:.0f} s ({total / 60:.1f} min){said}; by stage" in line
    assert "finetune 315 s" in line and "the 2 points along the runs took 9 process-seconds" in line


def test_demo_results_says_whether_a_second_run_wrote_the_same_files(tmp_path):
    results = _load("scripts/demo_results.py")
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "results.csv").write_text("method,forget_quality\nGA,0.5\n", encoding="utf-8")
        (folder / "claims.json").write_text('{"claims": []}', encoding="utf-8")
    assert all("byte-identical" in line for line in results.same_files_lines(first, second))
    (second / "results.csv").write_text("method,forget_quality\nGA,0.50001\n", encoding="utf-8")
    csv_line, claims_line = results.same_files_lines(first, second)
    assert "DIFFERENT" in csv_line and "byte-identical" in claims_line
