"""The study pipeline end to end on a very small configuration, then the cached rerun and a changed method."""

from __future__ import annotations

import csv
import json

import pytest
from scipy import stats

from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.study import parse_config, run_study

TINY_ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def tiny_study(methods) -> dict:
    return {
        "name": "e2e",
        "benchmark": {"builtin": {"authors": 10, "seed": 0}},
        "model": {
            "base": "tiny",
            "finetune": {"epochs": 1, "max_steps": 2, "batch_size": 8, "eval_limit": 0, "model_overrides": TINY_ARCH},
        },
        "methods": methods,
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "max_length": 96},
        "geffect": {"enabled": True, "every": 1, "estimator": "batch", "instances": True},
        "eval": {"ds_size": 4, "batch_size": 8, "max_new_tokens": 4, "every": 1, "points_ds_size": 3},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    config = parse_config(tiny_study(["GA", {"method": "NPO+KL", "grid": {"beta": [0.5]}}]))
    result = run_study(config, out)
    return out, config, result


def test_study_writes_runs_evaluations_tables_figures_and_report(finished):
    out, _, result = finished
    names = ["forget10-GA-seed0", "forget10-NPO+KL-beta0.5-seed0"]
    for name in names:
        run = out / "runs" / name
        log = read_jsonl(run / "log.jsonl")
        effects = read_jsonl(run / "geffect.jsonl")
        assert [r["step"] for r in log] == [1, 2] and [r["step"] for r in effects] == [1, 2]
        assert (run / "model" / "config.json").exists()
        assert (run / "eval" / "TOFU_EVAL.json").exists() and (run / "eval" / "TOFU_SUMMARY.json").exists()
        assert {p.stem for p in (run / "figures").glob("*.png")} >= {
            "effects_vs_step",
            "groups_vs_step",
            "layer_heatmap",
        }
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["target", "retain", *names]
    # The retain row is scored against its own log: forget quality is 1 by definition.
    assert float(rows["retain"]["forget_quality"]) == 1.0
    for name in names:
        summary = json.loads((out / "runs" / name / "eval" / "TOFU_SUMMARY.json").read_text())
        assert float(rows[name]["model_utility"]) == summary["model_utility"]
        assert float(rows[name]["final_e_u"]) == read_jsonl(out / "runs" / name / "geffect.jsonl")[-1]["e_u"]["total"]
    assert (out / "figures" / "quality_vs_utility.png").exists() and (out / "figures" / "effects_all_runs.png").exists()
    assert result.index == out / "index.html" and "forget10-NPO+KL-beta0.5-seed0" in result.index.read_text()
    timings = json.loads((out / "timings.json").read_text())["stages"]
    # Side by side on a multi-core CPU: both fine-tunes, then both unlearning runs, then both evaluations;
    # the retain and target models are scored twice: on the end-point sets and on the points subset.
    assert [s["stage"] for s in timings] == [
        "benchmark",
        "finetune",
        "finetune",
        "reference",
        "reference",
        "evaluate",
        "evaluate",
        "unlearn",
        "unlearn",
        "evaluate",
        "evaluate",
        "report",
    ]
    assert not any(s["cached"] for s in timings)


def test_every_run_is_scored_along_the_way_on_the_points_subset(finished):
    """eval.every 1 over 2 steps: points after step 1 and 2, plus the target as step 0, each on the first 3
    items of every set, against the retain model on the same 3 items (KS test recomputed here)."""
    out, _, _ = finished
    reference = json.loads((out / "evals/retain-forget10/points/TOFU_EVAL.json").read_text())
    retain_tr = [v["score"] for v in reference["forget_truth_ratio"]["value_by_index"].values()]
    assert len(retain_tr) == 3
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    for name in ["forget10-GA-seed0", "forget10-NPO+KL-beta0.5-seed0"]:
        points = out / "runs" / name / "points"
        assert sorted(p.name for p in points.iterdir()) == ["step-00001", "step-00002"]
        for point in points.iterdir():
            evaluation = json.loads((point / "TOFU_EVAL.json").read_text())
            assert evaluation["geffect_meta"]["set_sizes"]["forget"] == 3
            model_tr = [v["score"] for v in evaluation["forget_truth_ratio"]["value_by_index"].values()]
            summary = json.loads((point / "TOFU_SUMMARY.json").read_text())
            assert summary["forget_quality"] == pytest.approx(stats.ks_2samp(model_tr, retain_tr).pvalue, rel=1e-12)
        assert float(rows[name]["points"]) == 3  # the target (step 0) and the two points
        assert rows[name]["fq_at_matched_utility"] != ""
    assert (out / "evals/target-forget10/points/TOFU_SUMMARY.json").exists()
    assert (out / "figures" / "quality_utility_paths.png").exists()
    claims = json.loads((out / "claims.json").read_text())["claims"]
    assert [c["id"] for c in claims] == [1, 2, 3, 4, 5, 6]
    assert "claims" in (out / "results.md").read_text() and "Per method" in (out / "results.md").read_text()


def test_rerun_skips_finished_stages_and_redoes_only_what_changed(finished, capsys):
    out, config, _ = finished
    marker = out / "stages" / "unlearn-forget10-GA-seed0.json"
    before = marker.stat().st_mtime_ns
    again = run_study(config, out)
    assert all(s.cached for s in again.stages if s.stage != "report")
    assert marker.stat().st_mtime_ns == before
    assert "cached" in capsys.readouterr().err

    changed = parse_config(
        {
            **tiny_study(["GA", {"method": "NPO+KL", "grid": {"beta": [0.5]}, "training": {"lr": 5e-4}}]),
            "side_by_side": False,
        }
    )  # the one-after-the-other path; caching ignores this option
    third = run_study(changed, out)
    ran = {(s.stage, s.name) for s in third.stages if not s.cached}
    assert ran == {
        ("unlearn", "forget10-NPO+KL-beta0.5-seed0"),
        ("evaluate", "forget10-NPO+KL-beta0.5-seed0"),
        ("report", "index.html"),
    }
    options = read_jsonl(out / "runs" / "forget10-NPO+KL-beta0.5-seed0" / "log.jsonl")
    assert len(options) == 2  # the run was redone from scratch, not appended to


def test_a_foreign_output_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a study folder"):
        run_study(parse_config(tiny_study(["GA"])), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        run_study(parse_config(tiny_study(["GA"])), path)
