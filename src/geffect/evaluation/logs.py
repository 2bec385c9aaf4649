"""Evaluation files in the formats the field uses, read into one shape.

- ours and OpenUnlearning's ``TOFU_EVAL.json``: ``{metric name: {"agg_value", "value_by_index"}}``; ours adds a
  ``geffect_meta`` entry (forget split, set sizes, which item convention);
- legacy TOFU ``eval_log_aggregated.json``: ``{"eval_log.json": {...}, "eval_log_forget.json": {...},
  "eval_real_author_wo_options.json": {...}, "eval_real_world_wo_options.json": {...}}``, each with per-index
  ``avg_gt_loss``, ``avg_paraphrased_loss``, ``average_perturb_loss``, ``rougeL_recall``.

Legacy logs are converted to per-item entries that reproduce ``aggregate_eval_stat.py`` exactly: its truth
ratios use ``avg_paraphrased_loss`` on every set (on real authors and world facts that is the answer again,
scored in a separate batch), its probabilities ``avg_gt_loss``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from geffect.errors import UsageError
from geffect.evaluation.conventions import CONVENTIONS, convention_of
from geffect.evaluation.registry import METRICS, Entry, compute_metrics

META_KEY = "geffect_meta"
# An evaluation folder: the per-item values (OpenUnlearning's format) and the aggregates.
EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"
LEGACY_SET_FILES = {
    "eval_log_forget.json": "forget",
    "eval_log.json": "retain",
    "eval_real_author_wo_options.json": "ra",
    "eval_real_world_wo_options.json": "wf",
}
LEGACY_FIELDS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")
LEGACY_TRUTH_RATIO = {
    "forget": "forget_truth_ratio",
    "retain": "retain_Truth_Ratio",
    "ra": "ra_Truth_Ratio",
    "wf": "wf_Truth_Ratio",
}
# Forget-set sizes of the real TOFU splits; legacy logs scored at most the first 300 items.
LEGACY_FORGET_SIZES = {40: "forget01", 200: "forget05", 300: "forget10", 400: "forget10"}
LEGACY_DS_SIZE = 300


def convention_label(ds_size: int | None) -> str:
    if ds_size is None:
        return "all items of each set (OpenUnlearning)"
    return f"first {ds_size} items of each set (legacy TOFU ds_size)"


@dataclass
class EvalLog:
    """One model's evaluation: per-metric entries plus what produced them."""

    entries: dict[str, Entry]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def forget_split(self) -> str | None:
        return self.meta.get("forget_split")

    @property
    def forget_size(self) -> int | None:
        entry = self.entries.get("forget_truth_ratio")
        if entry is None or "value_by_index" not in entry:
            return (self.meta.get("set_sizes") or {}).get("forget")
        return len(entry["value_by_index"])

    def completed(self, retain: EvalLog | None = None) -> EvalLog:
        """A copy with every derivable per-item value and aggregate filled in (see `compute_metrics`)."""
        entries = compute_metrics(self.entries, None if retain is None else retain.entries, convention_of(self.meta))
        return EvalLog(entries=entries, meta=dict(self.meta), source=self.source)

    def to_json(self) -> dict[str, Any]:
        return {**self.entries, META_KEY: self.meta}


def load_eval_file(path: str | Path) -> EvalLog:
    """Read a TOFU_EVAL.json (ours or OpenUnlearning's) or a legacy eval_log_aggregated.json."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"evaluation log {path} does not exist; pass a TOFU_EVAL.json or eval_log_aggregated.json file"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(
            f"{path} is not a JSON file ({err}); pass a TOFU_EVAL.json or eval_log_aggregated.json file"
        ) from None
    return eval_log_from_dict(obj, str(path))


def eval_log_from_dict(obj: Any, source: str = "<memory>") -> EvalLog:
    """Detect the format of a parsed evaluation file and convert it."""
    if isinstance(obj, EvalLog):
        return obj
    if not isinstance(obj, dict):
        raise UsageError(
            f"{source} is not an evaluation log (expected a JSON object); pass a TOFU_EVAL.json or eval_log_aggregated.json file"
        )
    if any(key in obj for key in LEGACY_SET_FILES):
        return _from_legacy(obj, source)
    metric_keys = [k for k in obj if k in METRICS]
    if metric_keys and all(isinstance(obj[k], dict) for k in metric_keys):
        return _from_tofu_eval(obj, source)
    if metric_keys:
        raise UsageError(
            f"{source} holds only aggregate values (a TOFU_SUMMARY.json?); pass the TOFU_EVAL.json next to it, "
            "which holds the per-item values"
        )
    raise UsageError(
        f"{source} is neither a TOFU_EVAL.json (metric -> agg_value/value_by_index) nor a legacy TOFU "
        "eval_log_aggregated.json (eval_log.json, eval_log_forget.json, ...); pass one of those"
    )


def _from_tofu_eval(obj: dict, source: str) -> EvalLog:
    entries = {k: v for k, v in obj.items() if k in METRICS}
    for key, entry in entries.items():  # per-item values are {index: value}; anything else is a damaged file
        if "value_by_index" in entry and not isinstance(entry["value_by_index"], dict):
            kind = type(entry["value_by_index"]).__name__
            raise UsageError(
                f"{source}: {key}.value_by_index is a {kind}, not an object of per-item values; the file is damaged"
            )
    meta = dict(obj.get(META_KEY) or {})
    meta.setdefault("source_format", "open-unlearning")
    if "set_sizes" not in meta:
        meta["set_sizes"] = _sizes_from_entries(entries)
    meta.setdefault("ds_size", None)
    meta.setdefault("convention", convention_label(meta["ds_size"]))
    meta.setdefault("forget_split", None)
    return EvalLog(entries=entries, meta=meta, source=source)


def _sizes_from_entries(entries: Mapping[str, Entry]) -> dict[str, int]:
    sizes = {}
    for set_key in ("forget", "retain", "ra", "wf"):
        entry = entries.get(f"{set_key}_Q_A_Prob")
        if entry and "value_by_index" in entry:
            sizes[set_key] = len(entry["value_by_index"])
    attack = entries.get("mia_loss") or entries.get("mia_min_k")
    if attack and isinstance(attack.get("holdout"), dict) and "value_by_index" in attack["holdout"]:
        sizes["holdout"] = len(attack["holdout"]["value_by_index"])
    return sizes


def _from_legacy(obj: dict, source: str) -> EvalLog:
    missing = [key for key in LEGACY_SET_FILES if key not in obj]
    if missing:
        raise UsageError(
            f"legacy TOFU log {source} lacks {', '.join(missing)}; pass a complete eval_log_aggregated.json"
        )
    entries: dict[str, Entry] = {}
    sizes: dict[str, int] = {}
    for file_key, set_key in LEGACY_SET_FILES.items():
        block = obj[file_key]
        _check_legacy_block(block, file_key, source)
        keys = list(block["avg_gt_loss"])
        sizes[set_key] = len(keys)
        gt, para, pert = block["avg_gt_loss"], block["avg_paraphrased_loss"], block["average_perturb_loss"]
        entries[f"{set_key}_Q_A_Prob"] = {"value_by_index": {k: _prob_item(gt[k]) for k in keys}}
        entries[f"{set_key}_Q_A_PERT_Prob"] = {"value_by_index": {k: _prob_item(pert[k]) for k in keys}}
        if set_key in ("forget", "retain"):
            entries[f"{set_key}_Q_A_PARA_Prob"] = {"value_by_index": {k: _prob_item(para[k]) for k in keys}}
        entries[f"{set_key}_Q_A_ROUGE"] = {"value_by_index": {k: _rouge_item(block, k) for k in keys}}
        # aggregate_eval_stat.py: exp(mean perturbed loss - paraphrased loss) = P_true / P_false = 1 / tr.
        entries[LEGACY_TRUTH_RATIO[set_key]] = {
            "value_by_index": {k: {"score": math.exp(para[k] - _mean(pert[k]))} for k in keys}
        }
    ds_size = LEGACY_DS_SIZE if sizes["retain"] == LEGACY_DS_SIZE else None
    meta = {
        "source_format": "legacy-tofu",
        "ds_size": ds_size,
        "convention": convention_label(ds_size) if ds_size else "legacy TOFU log",
        "forget_split": LEGACY_FORGET_SIZES.get(sizes["forget"]),
        "forget_split_inferred": True,
        "set_sizes": sizes,
        "conventions": CONVENTIONS["legacy"].record(),
    }
    return EvalLog(entries=entries, meta=meta, source=source)


def _check_legacy_block(block: Any, file_key: str, source: str) -> None:
    if not isinstance(block, dict):
        raise UsageError(f"legacy TOFU log {source}: {file_key} is not an object of per-index values")
    missing = [f for f in LEGACY_FIELDS if f not in block]
    if missing:
        raise UsageError(f"legacy TOFU log {source}: {file_key} lacks {', '.join(missing)}")
    keys = set(block["avg_gt_loss"])
    if not keys or any(set(block[f]) != keys for f in LEGACY_FIELDS):
        raise UsageError(f"legacy TOFU log {source}: {file_key} has fields covering different item indices")


def _mean(values) -> float:
    return sum(values) / len(values) if isinstance(values, list) else float(values)


def _prob_item(avg_loss) -> dict:
    if isinstance(avg_loss, list):
        return {"prob": [math.exp(-v) for v in avg_loss], "avg_loss": list(avg_loss)}
    return {"prob": math.exp(-avg_loss), "avg_loss": avg_loss}


def _rouge_item(block: dict, key: str) -> dict:
    item = {"rougeL_recall": block["rougeL_recall"][key]}
    if "rouge1_recall" in block:
        item["rouge1_recall"] = block["rouge1_recall"][key]
    texts = block.get("generated_text", {}).get(key)
    if isinstance(texts, list) and len(texts) == 3:
        item["input"], item["generation"], item["ground_truth"] = texts
    return item


def check_retain_compatible(model: EvalLog, retain: EvalLog) -> None:
    """Refuse a retain log of another forget split or another forget-set size (the KS test would be meaningless).

    `retain` must be completed (`EvalLog.completed`), so that its forget truth ratios exist when derivable.
    """
    reference = retain.entries.get("forget_truth_ratio")
    if reference is None or "value_by_index" not in reference:
        raise UsageError(
            f"retain log {retain.source} has no per-item forget truth ratios (forget_truth_ratio); pass the retain model's TOFU_EVAL.json"
        )
    if model.forget_split and retain.forget_split and model.forget_split != retain.forget_split:
        raise UsageError(
            f"retain log {retain.source} is for {retain.forget_split}, but the model was evaluated on {model.forget_split}; "
            f"pass the log of the model trained on the retain set of {model.forget_split}"
        )
    if model.forget_size is not None and model.forget_size != retain.forget_size:
        raise UsageError(
            f"retain log {retain.source} scores {retain.forget_size} forget items but the model's evaluation scores "
            f"{model.forget_size}; use logs of the same forget split and the same --ds-size (legacy TOFU logs score 300)"
        )
