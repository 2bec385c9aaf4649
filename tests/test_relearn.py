"""The relearning attack: `geffect relearn` end to end on the tiny model, the items it draws, its one-line
errors, a study's `relearn:` section and the report's before/after table."""

from __future__ import annotations

import json

import pytest

from geffect.errors import UsageError
from geffect.reports.relearn import relearn_html, relearn_markdown, relearn_rows, write_relearn
from geffect.study import parse_config
from geffect.training.relearn import RELEARN_FILE, drawn_items


def test_relearn_cli_fine_tunes_then_evaluates(tiny_benchmark, tiny_target_model, tmp_path, capsys):
    from geffect.cli.main import main

    out = tmp_path / "attack"
    argv = ["relearn", "--model", tiny_target_model, "--data", tiny_benchmark, "--forget", "forget10", "--samples", 4,
            "--steps", 2, "--lr", 1e-3, "--out", out, "--no-progress", "--ds-size", 4, "--max-new-tokens", 8]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    document = json.loads((out / RELEARN_FILE).read_text())
    assert document["items"] == drawn_items(40, 4, 0) and len(document["losses"]) == 2
    assert document["summary"]["forget_Q_A_Prob"] == summary["forget_Q_A_Prob"]
    assert (out / "model" / "model.safetensors").exists() and (out / "TOFU_EVAL.json").exists()
    assert main([str(a) for a in argv]) == 2  # an existing --out is kept
    assert "already exists" in capsys.readouterr().err


def test_items_are_drawn_with_the_seed():
    assert drawn_items(40, 5, 1) == drawn_items(40, 5, 1) != drawn_items(40, 5, 2)
    assert len(set(drawn_items(40, 40, 0))) == 40
    with pytest.raises(UsageError, match="--samples 41 exceeds the 40 items"):
        drawn_items(40, 41, 0)


def _study(**changes) -> dict:
    base = {"name": "t", "benchmark": {"source": "org/data"}, "model": {"target": "org/target"},
            "methods": ["GA"], "forget_splits": ["forget10"], "seeds": [0]}  # fmt: skip
    return {**base, **changes}


def test_study_relearn_and_update_sections():
    config = parse_config(
        _study(
            relearn={"samples": [5, 10], "steps": 3},
            methods=[{"method": "NPO", "update": "sam", "update_params": {"rho": 0.1}}],
        )
    )
    assert config.relearn.samples == [5, 10] and config.relearn.steps == 3
    assert config.methods[0].training == {"update": "sam", "update_params": {"rho": 0.1}}
    for bad, message in (
        ({"relearn": {"samples": []}}, "relearn.samples"),
        ({"relearn": {"steps": 0}}, "relearn.steps"),
        ({"relearn": {"sample": [1]}}, "relearn.sample"),
        ({"methods": [{"method": "NPO", "update": "nope"}]}, "unknown update rule 'nope'"),
        ({"methods": [{"method": "NPO", "update": "sam", "update_params": {"r": 1}}]}, "methods[0].update"),
    ):
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config(_study(**bad))


def test_report_rows_before_and_after(tmp_path):
    (tmp_path / "runs" / "a" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "relearn-5").mkdir()
    entry = {"name": "a", "kind": "run", "forget_split": "forget10", "eval_dir": "runs/a/eval", "method": "NPO",
             "seed": 0, "run_dir": "runs/a"}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps({"entries": [entry]}))
    before = {"forget_quality": 0.5, "forget_Q_A_Prob": 0.1, "forget_Q_A_ROUGE": 0.2}
    after = {"forget_quality": 0.01, "forget_Q_A_Prob": 0.7, "forget_Q_A_ROUGE": 0.6}
    (tmp_path / "runs/a/eval/TOFU_SUMMARY.json").write_text(json.dumps(before))
    (tmp_path / "runs/a/relearn-5/TOFU_SUMMARY.json").write_text(json.dumps(after))
    (row,) = relearn_rows(tmp_path)
    assert row["samples"] == 5 and row["forget_prob_before"] == 0.1 and row["forget_prob_after"] == 0.7
    assert "| NPO | 0 | 5 | 0.5 | 0.01 | 0.1 | 0.7 | 0.2 | 0.6 |" in relearn_markdown([row])
    assert "<td>0.7</td>" in relearn_html(tmp_path)
    markdown, figure = write_relearn(tmp_path)
    assert markdown == relearn_markdown([row]) and figure.exists() and (tmp_path / "relearn.csv").exists()
