"""The TOFU metrics by OpenUnlearning name, each declaring what it is computed from.

An evaluation is a dict ``{metric name: entry}`` in OpenUnlearning's ``TOFU_EVAL.json`` layout: an entry holds
``agg_value`` and, for per-item metrics, ``value_by_index`` (item index as a string -> dict of numbers).
Three kinds of metric:

- leaves (``needs`` empty): per-item values measured on the model (probabilities, ROUGE, extraction
  strength, MIA scores); the runner fills their ``value_by_index``; here they are only aggregated;
- derived per-item metrics: ``value_by_index`` computed from the leaves' (truth ratios, normalised
  probabilities), unless already stored;
- aggregate-only metrics: ``agg_value`` from other metrics' aggregates and, where needed, from the retain
  model's log (model utility, forget quality, privleak).

`compute_metrics` walks the registry in order (dependencies first) and fills in every ``agg_value`` it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from geffect.evaluation import metrics as m
from geffect.evaluation.conventions import CONVENTIONS, DEFAULT_CONVENTION, Convention

Entry = dict[str, Any]
ValueByIndex = dict[str, Any]
# (own entry, dependency entries in `needs` order (None where absent), retain model's evaluation or None, the
# evaluation's convention)
Aggregator = Callable[[Entry, Sequence[Entry | None], Mapping[str, Entry] | None, Convention], Entry]
PerItem = Callable[[Sequence[ValueByIndex], Convention], ValueByIndex]


@dataclass(frozen=True)
class Metric:
    name: str
    aggregate: Aggregator
    needs: tuple[str, ...] = ()
    per_item: PerItem | None = None
    description: str = ""

    @property
    def is_leaf(self) -> bool:
        return not self.needs


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    missing = [name for name in metric.needs if name not in METRICS]
    if missing:
        raise ValueError(f"metric {metric.name} needs {missing}, which must be registered first")
    METRICS[metric.name] = metric
    return metric


# --- helpers over value_by_index ---


def _field(vbi: ValueByIndex, field: str, keys: Sequence[str]) -> list:
    return [None if vbi.get(k) is None else vbi[k].get(field) for k in keys]


def _aligned_keys(vbis: Sequence[ValueByIndex]) -> list[str]:
    keys = list(vbis[0])
    for other in vbis[1:]:
        if set(other) != set(keys):
            raise ValueError("per-item values of dependent metrics cover different items")
    return keys


def _item_mean(value) -> float | None:
    if value is None:
        return None
    return float(np.mean(value))


def _valid(values: Sequence) -> np.ndarray:
    return np.asarray([v for v in values if v is not None], dtype=np.float64)


def mean_of(field: str) -> Aggregator:
    """Mean over items of one per-item field (a list field is first averaged within the item)."""

    def aggregate(entry: Entry, deps, retain, convention) -> Entry:
        vbi = entry["value_by_index"]
        values = _valid([_item_mean(v) for v in _field(vbi, field, list(vbi))])
        return {"agg_value": float(values.mean()) if len(values) else None}

    return aggregate


def _closer_to_one(scores: np.ndarray, convention: Convention) -> float:
    return m.truth_ratio_closer_to_one(scores, convention.truth_ratio_guard)


def _true_better(scores: np.ndarray, convention: Convention) -> float:
    return m.truth_ratio_true_better(scores)


def _truth_ratio_aggregate(reduce: Callable[[np.ndarray, Convention], float]) -> Aggregator:
    def aggregate(entry: Entry, deps, retain, convention) -> Entry:
        vbi = entry["value_by_index"]
        scores = _valid(_field(vbi, "score", list(vbi)))
        return {"agg_value": reduce(scores, convention) if len(scores) else None}

    return aggregate


def _pair_items(field: str, compute: Callable[[Any, Any, Convention], float]) -> PerItem:
    """Per-item values from the avg_loss of a true-answer and a false-answers entry (None where either is)."""

    def per_item(vbis: Sequence[ValueByIndex], convention: Convention) -> ValueByIndex:
        true, false = vbis
        out = {}
        for key in _aligned_keys(vbis):
            t, f = true[key], false[key]
            ok = t is not None and f is not None and t.get("avg_loss") is not None and f.get("avg_loss") is not None
            out[key] = {field: float(compute([t["avg_loss"]], [f["avg_loss"]], convention)[0]) if ok else None}
        return out

    return per_item


_truth_ratio_items = _pair_items("score", lambda t, f, c: m.truth_ratio(t, f, c.truth_ratio_guard))
_normalised_items = _pair_items("prob", lambda t, f, c: m.normalised_probability(t, f, c.truth_ratio_guard))
_prob_mean_items = _pair_items("score", lambda t, f, c: m.truth_ratio_prob_mean(t, f))


def _mia_aggregate(entry: Entry, deps, retain, convention) -> Entry:
    scores = {}
    for part in ("forget", "holdout"):
        vbi = entry[part]["value_by_index"]
        scores[part] = _valid(_field(vbi, "score", list(vbi)))
        entry[part]["agg_value"] = float(scores[part].mean()) if len(scores[part]) else None
    if not len(scores["forget"]) or not len(scores["holdout"]):
        return {"agg_value": None, "auc": None}
    auc = m.auc_forget_vs_holdout(scores["forget"], scores["holdout"])
    return {"agg_value": auc, "auc": auc}


def _agg_values(deps: Sequence[Entry | None]) -> list | None:
    values = [None if d is None else d.get("agg_value") for d in deps]
    return None if any(v is None for v in values) else values


def _model_utility(entry: Entry, deps, retain, convention) -> Entry:
    values = _agg_values(deps)
    return {"agg_value": None if values is None else m.model_utility(values)}


def _forget_quality(entry: Entry, deps, retain, convention) -> Entry:
    (model_tr,) = deps
    reference = None if retain is None else retain.get("forget_truth_ratio")
    if model_tr is None or reference is None or "value_by_index" not in reference:
        return {"agg_value": None, "ks_statistic": None}
    mine = model_tr["value_by_index"]
    theirs = reference["value_by_index"]
    pvalue, statistic = m.forget_quality(
        _valid(_field(mine, "score", list(mine))), _valid(_field(theirs, "score", list(theirs)))
    )
    return {"agg_value": pvalue, "ks_statistic": statistic}


def _privleak(entry: Entry, deps, retain, convention) -> Entry:
    (attack,) = deps
    reference = None if retain is None else retain.get("mia_min_k")
    auc = None if attack is None else attack.get("agg_value")
    reference_auc = None if reference is None else reference.get("agg_value")
    if auc is None or reference_auc is None:
        return {"agg_value": None}
    return {"agg_value": m.privleak(auc, reference_auc), "reference_auc": reference_auc}


# --- the registry, in OpenUnlearning's names; dependencies come first ---

SET_NAMES = {"forget": "forget set", "retain": "retain set", "ra": "real authors", "wf": "world facts"}

for _set, _label in SET_NAMES.items():
    register(Metric(f"{_set}_Q_A_Prob", mean_of("prob"), description=f"probability of the answer, {_label}"))
    register(
        Metric(
            f"{_set}_Q_A_ROUGE", mean_of("rougeL_recall"), description=f"ROUGE-L recall of greedy generations, {_label}"
        )
    )
    register(
        Metric(
            f"{_set}_Q_A_PERT_Prob", mean_of("prob"), description=f"probabilities of the perturbed answers, {_label}"
        )
    )
for _set in ("forget", "retain"):
    register(
        Metric(
            f"{_set}_Q_A_PARA_Prob",
            mean_of("prob"),
            description=f"probability of the paraphrased answer, {SET_NAMES[_set]}",
        )
    )

# OpenUnlearning's configs/eval/tofu_metrics/forget_Q_A_PARA_ROUGE.yaml / _PERT_ROUGE.yaml: ROUGE-L recall of the
# greedy generation for the question against the paraphrased / each perturbed answer (handler rouge).
register(
    Metric(
        "forget_Q_A_PARA_ROUGE",
        mean_of("rougeL_recall"),
        description="ROUGE-L recall of greedy generations against the paraphrased answer, forget set",
    )
)
register(
    Metric(
        "forget_Q_A_PERT_ROUGE",
        mean_of("rougeL_recall"),
        description="ROUGE-L recall of greedy generations against each perturbed answer (mean), forget set",
    )
)

register(
    Metric(
        "forget_truth_ratio",
        _truth_ratio_aggregate(_closer_to_one),
        needs=("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"),
        per_item=_truth_ratio_items,
        description="mean min(tr, 1/tr), tr = P(perturbed) / P(paraphrased), forget set",
    )
)
register(
    Metric(
        "retain_Truth_Ratio",
        _truth_ratio_aggregate(_true_better),
        needs=("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob"),
        per_item=_truth_ratio_items,
        description="mean max(0, 1 - tr), tr = P(perturbed) / P(paraphrased), retain set",
    )
)
for _set in ("ra", "wf"):
    register(
        Metric(
            f"{_set}_Q_A_Prob_normalised",
            mean_of("prob"),
            needs=(f"{_set}_Q_A_Prob", f"{_set}_Q_A_PERT_Prob"),
            per_item=_normalised_items,
            description=f"p(answer) / (p(answer) + sum p(perturbed)), {SET_NAMES[_set]}",
        )
    )
    register(
        Metric(
            f"{_set}_Truth_Ratio",
            _truth_ratio_aggregate(_true_better),
            needs=(f"{_set}_Q_A_Prob", f"{_set}_Q_A_PERT_Prob"),
            per_item=_truth_ratio_items,
            description=f"mean max(0, 1 - tr), tr = P(perturbed) / P(answer), {SET_NAMES[_set]}",
        )
    )

# OpenUnlearning's truth_ratio with aggregator prob_mean (memorization.py): P_true / (P_true + P_false + 1e-10).
for _set, _true in (("forget", "PARA_Prob"), ("retain", "PARA_Prob"), ("ra", "Prob"), ("wf", "Prob")):
    register(
        Metric(
            f"{_set}_truth_ratio_prob_mean",
            mean_of("score"),
            needs=(f"{_set}_Q_A_{_true}", f"{_set}_Q_A_PERT_Prob"),
            per_item=_prob_mean_items,
            description=f"mean P_true / (P_true + P_false + 1e-10) (OpenUnlearning's prob_mean), {SET_NAMES[_set]}",
        )
    )

UTILITY_COMPONENTS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)
register(
    Metric(
        "model_utility",
        _model_utility,
        needs=UTILITY_COMPONENTS,
        description="harmonic mean of the nine utility numbers",
    )
)
register(
    Metric(
        "forget_quality",
        _forget_quality,
        needs=("forget_truth_ratio",),
        description="KS-test p-value of per-item forget truth ratios against the retain model's",
    )
)
register(Metric("extraction_strength", mean_of("score"), description="teacher-forced extraction strength, forget set"))
register(Metric("exact_memorization", mean_of("score"), description="teacher-forced exact memorisation, forget set"))
for _attack, _what in (
    ("loss", "LOSS"),
    ("zlib", "zlib"),
    ("min_k", "Min-k"),
    ("min_k_plus_plus", "Min-k++"),
    ("gradnorm", "gradient-norm"),
    ("reference", "reference-model"),
):
    register(Metric(f"mia_{_attack}", _mia_aggregate, description=f"{_what} attack AUC, forget vs holdout"))
register(
    Metric(
        "privleak",
        _privleak,
        needs=("mia_min_k",),
        description="relative change of 1 - AUC(Min-k) against the retain model's, in percent",
    )
)


def compute_metrics(
    entries: Mapping[str, Entry], retain: Mapping[str, Entry] | None = None, convention: Convention | None = None
) -> dict[str, Entry]:
    """Fill in every derivable per-item value and aggregate, in registry order.

    Stored per-item values are kept (they are what the evaluation measured); aggregates are always
    recomputed from them. Aggregate-only metrics are always present, with ``agg_value`` None when an input
    (for forget quality and privleak: the retain model's log) is missing. `convention` (default geffect) decides
    the formulas where the references differ (evaluation/conventions.py).
    """
    convention = convention or CONVENTIONS[DEFAULT_CONVENTION]
    out: dict[str, Entry] = {name: _copy_entry(entry) for name, entry in entries.items()}
    for metric in METRICS.values():
        deps = [out.get(name) for name in metric.needs]
        entry = out.get(metric.name)
        if metric.per_item is not None:
            if entry is None or "value_by_index" not in entry:
                if any(d is None or "value_by_index" not in d for d in deps):
                    continue
                entry = {"value_by_index": metric.per_item([d["value_by_index"] for d in deps], convention)}
        elif metric.is_leaf:
            if entry is None or not _has_items(entry):
                continue
        else:
            entry = {}
        entry.update(metric.aggregate(entry, deps, retain, convention))
        out[metric.name] = entry
    return out


def _has_items(entry: Entry) -> bool:
    return "value_by_index" in entry or ("forget" in entry and "holdout" in entry)


def _copy_entry(entry: Entry) -> Entry:
    copied = dict(entry)
    for part in ("forget", "holdout"):
        if isinstance(copied.get(part), dict):
            copied[part] = dict(copied[part])
    return copied
