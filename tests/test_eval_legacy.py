"""Legacy TOFU logs: our aggregation against an independent transcription of aggregate_eval_stat.py.

The reference logs are the TOFU authors' own Llama-2-7B evaluations (first 300 items of each set). Each
retain model was trained without one forget split: retain90 -> forget10 (300 of 400 items scored),
retain95 -> forget05 (200), retain99 -> forget01 (40); the full model's forget log is forget10's (300). A
pair is valid only when both logs scored the same forget set.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp

from geffect.errors import UsageError
from geffect.evaluation import load_eval_file, summarize
from test_eval_support import legacy_log

pytestmark = pytest.mark.needs_tofu_logs  # every test here reads the TOFU authors' logs

NAMES = ("full", "retain90", "retain95", "retain99")
FORGET_ITEMS = {"full": 300, "retain90": 300, "retain95": 200, "retain99": 40}
VALID_PAIRS = [(a, b) for a, b in itertools.product(NAMES, NAMES) if FORGET_ITEMS[a] == FORGET_ITEMS[b]]
INVALID_PAIRS = [(a, b) for a, b in itertools.product(NAMES, NAMES) if FORGET_ITEMS[a] != FORGET_ITEMS[b]]

# aggregate_eval_stat.py's names -> ours (OpenUnlearning's)
LEGACY_NAMES = {
    "Prob. Retain": "retain_Q_A_Prob",
    "ROUGE Retain": "retain_Q_A_ROUGE",
    "Truth Ratio Retain": "retain_Truth_Ratio",
    "Prob. Real Authors": "ra_Q_A_Prob_normalised",
    "ROUGE Real Authors": "ra_Q_A_ROUGE",
    "Truth Ratio Real Authors": "ra_Truth_Ratio",
    "Prob. Real World": "wf_Q_A_Prob_normalised",
    "ROUGE Real World": "wf_Q_A_ROUGE",
    "Truth Ratio Real World": "wf_Truth_Ratio",
    "Prob. Forget": "forget_Q_A_Prob",
    "ROUGE Forget": "forget_Q_A_ROUGE",
    "Truth Ratio Forget": "forget_truth_ratio",
    "Model Utility": "model_utility",
}


def _values(block: dict, key: str) -> np.ndarray:
    return np.array(list(block[key].values()))


def reference_aggregation(model: dict, retain: dict | None) -> dict:
    """aggregate_eval_stat.py (locuslab/tofu), re-typed: get_model_utility and get_forget_quality."""
    tasks = {
        "eval_real_author_wo_options.json": "Real Authors",
        "eval_real_world_wo_options.json": "Real World",
        "eval_log.json": "Retain",
        "eval_log_forget.json": "Forget",
    }
    out = {}
    for key, task in tasks.items():
        block = model[key]
        if "eval_log" in key:
            out[f"Prob. {task}"] = np.mean(np.exp(-_values(block, "avg_gt_loss")))
        else:
            true = np.exp(-_values(block, "avg_gt_loss"))
            false = np.exp(-_values(block, "average_perturb_loss"))
            out[f"Prob. {task}"] = np.mean(true / np.concatenate([true[:, None], false], axis=1).sum(-1))
        out[f"ROUGE {task}"] = _values(block, "rougeL_recall").mean()
        ratio = np.exp(_values(block, "average_perturb_loss").mean(-1) - _values(block, "avg_paraphrased_loss"))
        if "forget" in key:
            out[f"Truth Ratio {task}"] = np.mean(np.minimum(ratio, 1 / ratio))
        else:
            out[f"Truth Ratio {task}"] = np.mean(np.maximum(0, 1 - 1 / ratio))
    out["Model Utility"] = hmean([v for k, v in out.items() if "Forget" not in k])
    if retain is not None:

        def forget_ratio(log):
            block = log["eval_log_forget.json"]
            return np.exp(_values(block, "average_perturb_loss").mean(-1) - _values(block, "avg_paraphrased_loss"))

        test = ks_2samp(forget_ratio(model), forget_ratio(retain))
        out["Forget Quality"], out["KS Test Forget"] = test.pvalue, test.statistic
    return out


def _read(name: str) -> dict:
    return json.loads(legacy_log(name).read_text())


def _assert_matches(summary: dict, expected: dict) -> None:
    for legacy_name, ours in LEGACY_NAMES.items():
        assert summary[ours] == pytest.approx(expected[legacy_name], rel=1e-9, abs=0), legacy_name
    if "Forget Quality" in expected:
        assert summary["forget_quality"] == pytest.approx(expected["Forget Quality"], rel=1e-9, abs=0)
        assert summary["forget_quality_ks_statistic"] == pytest.approx(expected["KS Test Forget"], rel=1e-9, abs=0)


def test_cli_summarize_full_against_retain90(cli):
    code, out, err = cli("eval", "summarize", legacy_log("full"), "--retain-logs", legacy_log("retain90"))
    assert code == 0, err
    summary = json.loads(out)
    expected = reference_aggregation(_read("full"), _read("retain90"))
    _assert_matches(summary, expected)
    # The full model still knows the forget set: far from the retain model.
    assert summary["forget_quality"] < 1e-10
    assert summary["convention"].startswith("first 300 items")
    assert summary["set_sizes"] == {"forget": 300, "retain": 300, "ra": 100, "wf": 117}
    assert summary["forget_split"] == "forget10"
    assert summary["privleak"] is None  # legacy logs have no MIA scores


@pytest.mark.parametrize("model, retain", VALID_PAIRS)
def test_summarize_reproduces_legacy_aggregation(model, retain):
    summary = summarize(load_eval_file(legacy_log(model)), load_eval_file(legacy_log(retain)))
    _assert_matches(summary, reference_aggregation(_read(model), _read(retain)))
    if model == retain:
        assert summary["forget_quality"] == 1.0


@pytest.mark.parametrize("model", NAMES)
def test_summarize_without_retain_log_leaves_forget_quality_missing(model, cli):
    code, out, err = cli("eval", "summarize", legacy_log(model))
    assert code == 0, err
    summary = json.loads(out)
    _assert_matches(summary, reference_aggregation(_read(model), None))
    assert summary["forget_quality"] is None and summary["forget_quality_ks_statistic"] is None


@pytest.mark.parametrize("model, retain", INVALID_PAIRS)
def test_retain_log_of_another_forget_split_is_refused(model, retain, cli):
    with pytest.raises(UsageError):
        summarize(load_eval_file(legacy_log(model)), load_eval_file(legacy_log(retain)))
    code, out, err = cli("eval", "summarize", legacy_log(model), "--retain-logs", legacy_log(retain))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "retain log" in err


def test_transcription_can_fail():
    """The reference transcription tells the logs apart, so the comparisons above are not vacuous."""
    full, retain = reference_aggregation(_read("full"), None), reference_aggregation(_read("retain90"), None)
    assert abs(full["Model Utility"] - retain["Model Utility"]) > 1e-4
    assert abs(full["Truth Ratio Forget"] - retain["Truth Ratio Forget"]) > 1e-3


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not a JSON file"),
        ("[1, 2, 3]", "not an evaluation log"),
        ('{"model_utility": 0.5, "forget_quality": 0.1}', "TOFU_SUMMARY"),
        ('{"something": {"else": 1}}', "neither a TOFU_EVAL.json"),
        ('{"eval_log.json": {}}', "lacks"),
    ],
)
def test_log_of_another_format_is_refused(tmp_path, cli, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for argv in (("eval", "summarize", bad), ("eval", "summarize", legacy_log("retain99"), "--retain-logs", bad)):
        code, out, err = cli(*argv)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and message in err


def test_legacy_log_with_inconsistent_indices_is_refused(tmp_path):
    log = _read("retain99")
    del log["eval_log.json"]["rougeL_recall"]["0"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(log))
    with pytest.raises(UsageError, match="different item indices"):
        load_eval_file(path)
