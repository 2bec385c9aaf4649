"""Metric functions against hand-computed values."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from geffect.evaluation import metrics as m
from geffect.evaluation.registry import compute_metrics


@pytest.mark.parametrize("n", [3, 5, 10])
def test_ks_floor_for_fully_separated_samples(n):
    low, high = np.arange(n) / 10.0, 5.0 + np.arange(n)
    pvalue, statistic = m.forget_quality(low, high)
    assert statistic == 1.0
    assert pvalue == pytest.approx(2.0 / math.comb(2 * n, n), rel=1e-12)
    assert m.forget_quality(high, high) == (1.0, 0.0)


def test_truth_ratio_from_losses():
    # P_true = e^-1, P_false = exp(-(2 + 3) / 2)  ->  tr = e^(1 - 2.5)
    assert m.truth_ratio([1.0], [[2.0, 3.0]])[0] == pytest.approx(math.exp(-1.5), rel=1e-15)


def test_truth_ratio_aggregations():
    tr = [0.5, 2.0, 1.0, 0.25]
    # min(tr, 1/tr) = 0.5, 0.5, 1, 0.25
    assert m.truth_ratio_closer_to_one(tr) == pytest.approx(2.25 / 4, rel=1e-15)
    # max(0, 1 - tr) = 0.5, 0, 0, 0.75
    assert m.truth_ratio_true_better(tr) == pytest.approx(1.25 / 4, rel=1e-15)


def test_normalised_probability():
    # p_true = 1/2, perturbed 1/4 + 1/8  ->  0.5 / 0.875
    value = m.normalised_probability([math.log(2)], [[math.log(4), math.log(8)]])[0]
    assert value == pytest.approx(0.5 / 0.875, rel=1e-14)


@pytest.mark.parametrize(
    "correct, expected",
    [
        ([1, 0, 1, 1], 1 - 2 / 4),  # suffix from k=2 is right
        ([1, 1, 1], 1.0),  # k = 0
        ([0, 0, 0, 0, 0], 0.0),  # only the empty suffix (k = T)
        ([1, 1, 0], 0.0),  # last token wrong: k = T
        ([0, 1, 1, 1, 1], 1 - 1 / 5),
    ],
)
def test_extraction_strength(correct, expected):
    assert m.extraction_strength(np.array(correct, dtype=bool)) == pytest.approx(expected, abs=1e-15)


def test_exact_memorization():
    assert m.exact_memorization(np.array([1, 0, 1, 1], dtype=bool)) == 0.75


@pytest.mark.parametrize(
    "auc, reference, expected",
    [(0.8, 0.5, (0.2 - 0.5) / 0.5 * 100), (0.5, 0.5, 0.0), (0.3, 0.6, (0.7 - 0.4) / 0.4 * 100)],
)
def test_privleak_formula(auc, reference, expected):
    assert m.privleak(auc, reference) == pytest.approx(expected, rel=1e-8)


def test_auc_forget_vs_holdout():
    assert m.auc_forget_vs_holdout([1, 2], [3, 4]) == 1.0  # forget losses lower: members
    assert m.auc_forget_vs_holdout([3, 4], [1, 2]) == 0.0
    assert m.auc_forget_vs_holdout([1, 1], [1, 1]) == 0.5
    assert m.auc_forget_vs_holdout([1, 3], [2, 4]) == 0.75  # pairs holdout > forget: (2,1) (4,1) (4,3)


def test_mia_scores():
    assert m.mia_min_k_score([-1, -2, -3, -4, -5], k=0.4) == 4.5  # lowest 2 of 5: -5, -4
    assert m.mia_min_k_score([-1.0], k=0.4) == 1.0  # at least one token
    assert m.mia_zlib_score(2.0, "aaaa") == 2.0 / len(zlib.compress(b"aaaa"))


def test_model_utility_is_harmonic_mean():
    assert m.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4), rel=1e-15)
    assert m.model_utility([1.0, 0.0, 0.5]) == 0.0


@pytest.mark.parametrize(
    "reference, generation, recall",
    [
        # rouge-score lowercases and splits on anything outside [a-z0-9]: hyphens and "!" separate words
        # reference [hsiao yun hwa is the author], generation [the author is hsiao yun hwa]: LCS 3 of 6
        ("Hsiao Yun-Hwa is the author.", "The author is Hsiao Yun Hwa!", 3 / 6),
        # accented letters are dropped, so "José" -> "jos" does not match "jose": only "saramago" (1 of 2)
        ("José Saramago", "Jose Saramago", 1 / 2),
        # same accents on both sides match: [gabriel garc a m rquez wrote it]
        ("Gabriel García Márquez wrote it.", "gabriel garcía márquez, wrote it!", 1.0),
        # "Søren Ågård" -> [s ren g rd]; "Soren Agard" shares none of them
        ("Søren Ågård", "Soren Agard", 0.0),
        # stemming on: "novels" -> "novel"; apostrophes split: [anna lena o brien s novel]
        ("Anna-Lena O'Brien's novels", "anna lena o brien s novel", 1.0),
    ],
)
def test_rouge_l_recall_on_names(reference, generation, recall):
    (scores,) = m.rouge_recalls([generation], [reference])
    assert scores["rougeL_recall"] == pytest.approx(recall, abs=1e-12)


def test_registry_derives_truth_ratios_and_aggregates():
    # Two forget items: P(para) = e^-1 each; perturbed losses average 1.5 and 0.5.
    entries = {
        "forget_Q_A_PARA_Prob": {"value_by_index": {"0": {"avg_loss": 1.0}, "1": {"avg_loss": 1.0}}},
        "forget_Q_A_PERT_Prob": {"value_by_index": {"0": {"avg_loss": [1.0, 2.0]}, "1": {"avg_loss": [0.5, 0.5]}}},
    }
    out = compute_metrics(entries)
    scores = [out["forget_truth_ratio"]["value_by_index"][k]["score"] for k in ("0", "1")]
    assert scores == pytest.approx([math.exp(-0.5), math.exp(0.5)], rel=1e-15)
    assert out["forget_truth_ratio"]["agg_value"] == pytest.approx(math.exp(-0.5), rel=1e-15)
    # Nothing to compare with: never invented.
    assert out["forget_quality"]["agg_value"] is None
    assert out["model_utility"]["agg_value"] is None
    assert out["privleak"]["agg_value"] is None
