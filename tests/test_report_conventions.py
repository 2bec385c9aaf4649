"""The report names the convention of every evaluation it shows and repeats a mixed-convention warning."""

import json

from geffect.reports.conventions import conventions_html


def _summary(folder, name, warning=None):
    folder.mkdir(parents=True)
    record = {"name": name, "truth_ratio_guard": 1e-10 if name == "openunlearning" else 0.0}
    (folder / "TOFU_SUMMARY.json").write_text(json.dumps({"conventions": record, "convention_warning": warning}))


def test_each_convention_and_the_warning_are_listed(tmp_path):
    _summary(tmp_path / "evals" / "retain-forget05", "geffect")
    _summary(tmp_path / "runs" / "ga" / "eval", "openunlearning", warning="evaluated under openunlearning but ...")
    section = conventions_html(tmp_path)
    assert "<b>geffect (truth_ratio_guard 0.0)</b>: 1 evaluation(s)" in section
    assert "<b>openunlearning (truth_ratio_guard 1e-10)</b>: 1 evaluation(s)" in section
    assert "evaluated under openunlearning but ..." in section


def test_a_study_without_evaluations_has_no_section(tmp_path):
    assert conventions_html(tmp_path) == ""
