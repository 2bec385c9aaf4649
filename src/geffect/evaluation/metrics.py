"""TOFU metrics as plain functions over per-item numbers (DESIGN section 6).

Every function here is pure numpy/scipy: no model, no files. Losses are per-token average negative
log-likelihoods (``avg_nll``), so a probability is ``exp(-avg_nll)``.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy import stats

# OpenUnlearning's Min-k / Min-k++ fraction for TOFU.
MIN_K_FRACTION = 0.4


def probability(avg_nll: np.ndarray) -> np.ndarray:
    """Per-item probability of an answer: exp(-mean token NLL)."""
    return np.exp(-np.asarray(avg_nll, dtype=np.float64))


def normalised_probability(avg_nll_true: np.ndarray, avg_nll_false: np.ndarray, guard: float = 0.0) -> np.ndarray:
    """p_true / (p_true + sum_j p_false_j + guard) per item; `avg_nll_false` has one row per item. `guard` 1e-10 is
    OpenUnlearning's (memorization.py probability_w_options)."""
    p_true = probability(avg_nll_true)
    p_false = probability(avg_nll_false).reshape(len(p_true), -1).sum(axis=1)
    return p_true / (p_true + p_false + guard)


def truth_ratio(avg_nll_true: np.ndarray, avg_nll_false: np.ndarray, guard: float = 0.0) -> np.ndarray:
    """tr = P_false / P_true with P_false = exp(-mean_j avg_nll_false_j), computed in log space.

    With `guard` > 0 it is OpenUnlearning's (memorization.py truth_ratio): P_false / (P_true + guard), which the
    guard dominates once the true answer's mean NLL passes -log(guard) (~23 for 1e-10).
    """
    true = np.asarray(avg_nll_true, dtype=np.float64)
    false = np.asarray(avg_nll_false, dtype=np.float64).reshape(len(true), -1).mean(axis=1)
    if guard:
        return np.exp(-false) / (np.exp(-true) + guard)
    return np.exp(true - false)


def truth_ratio_closer_to_one(tr: np.ndarray, guard: float = 0.0) -> float:
    """Forget set: mean(min(tr, 1/(tr + guard))); 1 when true and false answers are equally likely
    (guard 1e-10: OpenUnlearning's closer_to_1_better)."""
    tr = np.asarray(tr, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(tr, 1.0 / (tr + guard))))


def truth_ratio_prob_mean(avg_nll_true: np.ndarray, avg_nll_false: np.ndarray) -> np.ndarray:
    """OpenUnlearning's `prob_mean` truth ratio (memorization.py truth_ratio, aggregator prob_mean; the extent of
    knowledge of its meta-evaluation): P_true / (P_true + P_false + 1e-10) per item, averaged by the caller."""
    true = np.exp(-np.asarray(avg_nll_true, dtype=np.float64))
    false = np.exp(-np.asarray(avg_nll_false, dtype=np.float64).reshape(len(true), -1).mean(axis=1))
    return true / (true + false + 1e-10)


def truth_ratio_true_better(tr: np.ndarray) -> float:
    """Retain, real authors, world facts: mean(max(0, 1 - tr)); higher when the true answer wins."""
    tr = np.asarray(tr, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


def forget_quality(model_tr: np.ndarray, retain_tr: np.ndarray) -> tuple[float, float]:
    """(p-value, statistic) of the two-sample KS test between per-item forget truth ratios.

    scipy chooses the exact distribution for small samples, the asymptotic one for large ones (its default,
    as the TOFU authors used it).
    """
    result = stats.ks_2samp(np.asarray(model_tr, dtype=np.float64), np.asarray(retain_tr, dtype=np.float64))
    return float(result.pvalue), float(result.statistic)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the nine utility numbers; 0 as soon as one of them is 0."""
    values = np.asarray(values, dtype=np.float64)
    if np.any(values <= 0):
        return 0.0
    return float(stats.hmean(values))


def rouge_recalls(generations: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1 and ROUGE-L recall (and ROUGE-L F1) of each generation against its reference, stemming on."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    out = []
    for generation, reference in zip(generations, references, strict=True):
        scores = scorer.score(reference, generation)
        out.append(
            {
                "rouge1_recall": scores["rouge1"].recall,
                "rougeL_f1": scores["rougeL"].fmeasure,
                "rougeL_recall": scores["rougeL"].recall,
            }
        )
    return out


def extraction_strength(correct: np.ndarray, floor: bool = False) -> float:
    """1 - k/T, k the smallest index such that every greedy teacher-forced prediction from k on is right.

    `correct` holds, per answer token (EOS excluded), whether the argmax prediction equals the label. The empty
    suffix (k = T) always matches, so an item whose last token is wrong scores 0. `floor`: OpenUnlearning's loop
    (memorization.py extraction_strength) stops at k = T - 1 and scores such an item 1/T.
    """
    correct = np.asarray(correct, dtype=bool)
    total = len(correct)
    if total == 0:
        return 0.0
    wrong = np.flatnonzero(~correct)
    k = 0 if len(wrong) == 0 else int(wrong[-1]) + 1
    if floor:
        k = min(k, total - 1)
    return 1.0 - k / total


def exact_memorization(correct: np.ndarray) -> float:
    """Fraction of answer tokens (EOS excluded) whose teacher-forced argmax prediction is right."""
    correct = np.asarray(correct, dtype=bool)
    return float(correct.mean()) if len(correct) else 0.0


# --- membership inference: higher score = less likely a member (OpenUnlearning's convention) ---


def mia_loss_score(avg_nll: float) -> float:
    return float(avg_nll)


def mia_zlib_score(avg_nll: float, text: str) -> float:
    """Loss over the zlib-compressed length of the answer text (bytes)."""
    return float(avg_nll) / max(len(zlib.compress(text.encode("utf-8"))), 1)


def mia_min_k_score(token_logprobs: np.ndarray, k: float = MIN_K_FRACTION) -> float:
    """Minus the mean of the lowest k-fraction of token log-probabilities."""
    values = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if len(values) == 0:
        return 0.0
    count = max(1, int(len(values) * k))
    return float(-np.mean(values[:count]))


def mia_min_k_plus_plus_score(token_zscores: np.ndarray, k: float = MIN_K_FRACTION) -> float:
    """Min-k on token log-probs standardised by the model's own next-token distribution ((log p - mu) / sigma)."""
    return mia_min_k_score(token_zscores, k)


def mia_reference_score(avg_nll: float, reference_avg_nll: float) -> float:
    """OpenUnlearning's reference attack (mia/reference.py ReferenceAttack.compute_score): the target model's mean
    answer NLL minus the reference model's."""
    return float(avg_nll) - float(reference_avg_nll)


def auc_forget_vs_holdout(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with holdout as the positive class: P(holdout score > forget score), ties counted half.

    1 when every forget item looks more like a member (lower score) than every holdout item; 0.5 when the
    two sets are indistinguishable. Computed from ranks (the Mann-Whitney U statistic).
    """
    forget = np.asarray(forget_scores, dtype=np.float64)
    holdout = np.asarray(holdout_scores, dtype=np.float64)
    if len(forget) == 0 or len(holdout) == 0:
        raise ValueError("AUC needs at least one forget and one holdout score")
    ranks = stats.rankdata(np.concatenate([forget, holdout]))
    u = ranks[len(forget) :].sum() - len(holdout) * (len(holdout) + 1) / 2
    return float(u / (len(forget) * len(holdout)))


def privleak(auc: float, reference_auc: float) -> float:
    """OpenUnlearning's privleak: relative change of (1 - AUC) against the retain model's, in percent."""
    score, reference = 1.0 - auc, 1.0 - reference_auc
    return (score - reference) / (reference + 1e-10) * 100.0
