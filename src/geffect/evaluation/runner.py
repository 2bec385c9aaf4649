"""Per-item TOFU evaluation of a model: the passes over each set, then the metric registry.

`evaluate` returns a ``TOFU_EVAL.json``-shaped dict (OpenUnlearning's layout plus a ``geffect_meta`` entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from geffect.data.templates import Template, get_template
from geffect.data.tofu import FORGET_SPLITS, HOLDOUT_FOR_FORGET, load_split, slice_record
from geffect.errors import UsageError
from geffect.evaluation import metrics as m
from geffect.evaluation.config import DEFAULT_BATCH_SIZE
from geffect.evaluation.conventions import DEFAULT_CONVENTION, Convention, convention_of, get_convention
from geffect.evaluation.extra import alternative_rouge_entries, extra_membership_entries
from geffect.evaluation.generation import MAX_NEW_TOKENS, generate_answers
from geffect.evaluation.logs import (
    EvalLog,
    check_retain_compatible,
    convention_label,
    eval_log_from_dict,
    load_eval_file,
)
from geffect.evaluation.registry import Entry
from geffect.evaluation.scoring import TokenStats, score_answers


@dataclass(frozen=True)
class EvalSet:
    """One TOFU evaluation set and the passes it needs."""

    key: str  # metric-name prefix (OpenUnlearning's)
    split: str
    paraphrased: bool  # truth ratio against the paraphrased answer (else against the answer itself)
    perturbed: bool
    generate: bool
    membership: bool  # scored by the MIA attacks (forget vs holdout)


def eval_sets(forget_split: str) -> tuple[EvalSet, ...]:
    return (
        EvalSet(
            "forget", f"{forget_split}_perturbed", paraphrased=True, perturbed=True, generate=True, membership=True
        ),
        EvalSet("retain", "retain_perturbed", paraphrased=True, perturbed=True, generate=True, membership=False),
        EvalSet("ra", "real_authors_perturbed", paraphrased=False, perturbed=True, generate=True, membership=False),
        EvalSet("wf", "world_facts_perturbed", paraphrased=False, perturbed=True, generate=True, membership=False),
        EvalSet(
            "holdout",
            HOLDOUT_FOR_FORGET[forget_split],
            paraphrased=False,
            perturbed=False,
            generate=False,
            membership=True,
        ),
    )


def load_sets(data: str, forget_split: str, ds_size: int | None) -> dict[str, list[dict]]:
    """Records of each evaluation set, cut to the first `ds_size` items when given (legacy TOFU: 300)."""
    if forget_split not in FORGET_SPLITS:
        raise UsageError(f"unknown forget split {forget_split!r}; choose one of {', '.join(FORGET_SPLITS)}")
    if ds_size is not None and ds_size < 1:
        raise UsageError(f"--ds-size must be a positive number of items, got {ds_size}")
    return {s.key: load_split(data, s.split)[:ds_size] for s in eval_sets(forget_split)}


def load_retain_log(retain_logs: str | Mapping[str, Any] | EvalLog | None) -> EvalLog | None:
    if retain_logs is None:
        return None
    if isinstance(retain_logs, (str, bytes)) or hasattr(retain_logs, "__fspath__"):
        return load_eval_file(retain_logs)
    return eval_log_from_dict(retain_logs)


@dataclass
class EvalPlan:
    """What an evaluation will score, checked before any model work: the records, the metadata, the retain log."""

    records: dict[str, list[dict]]
    meta: dict[str, Any]
    retain: EvalLog | None


def plan_evaluation(
    data: str,
    forget_split: str,
    template: Template | str,
    retain_logs: str | Mapping[str, Any] | EvalLog | None = None,
    ds_size: int | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    convention: str = DEFAULT_CONVENTION,
) -> EvalPlan:
    """Load the sets and the retain log and check that they fit together (UsageError otherwise). Without `ds_size`
    the convention's applies (legacy: 300)."""
    template = get_template(template) if isinstance(template, str) else template
    rules = get_convention(convention)
    ds_size = rules.ds_size if ds_size is None else ds_size
    records = load_sets(data, forget_split, ds_size)
    meta = {
        "source_format": "geffect",
        "forget_split": forget_split,
        "holdout_split": HOLDOUT_FOR_FORGET[forget_split],
        "ds_size": ds_size,
        "convention": convention_label(ds_size),
        "set_sizes": {key: len(items) for key, items in records.items()},
        "data": str(data),
        **({"data_slice": slice_record(data)} if slice_record(data) else {}),  # geffect data slice
        "template": template.name,
        "max_new_tokens": max_new_tokens,
        "conventions": rules.record(),
    }
    retain = load_retain_log(retain_logs)
    if retain is not None:
        retain = retain.completed()
        check_retain_compatible(EvalLog(entries={}, meta=meta), retain)
        meta["retain_log"] = retain.source
    return EvalPlan(records=records, meta=meta, retain=retain)


def evaluate(
    model,
    tokenizer,
    data: str,
    forget_split: str,
    template: Template | str,
    retain_logs: str | Mapping[str, Any] | EvalLog | None = None,
    ds_size: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    convention: str = DEFAULT_CONVENTION,
    reference_model=None,
    gradnorm: bool = False,
    question_key: str = "question",
) -> dict[str, Any]:
    """Evaluate `model` on the TOFU sets of `data` for `forget_split`; returns TOFU_EVAL-shaped results.

    `retain_logs` (a path or a loaded evaluation, any supported format) is the retain model's evaluation;
    without it forget quality and privleak are None. `ds_size` scores only the first N items of each set
    (legacy TOFU used 300); None scores all (OpenUnlearning), or the convention's. `convention`: geffect,
    openunlearning or legacy (evaluation/conventions.py). `reference_model` adds the reference MIA, `gradnorm` the
    gradient-norm MIA (one backward per item). `question_key` "paraphrased_question" asks the forget and retain
    sets' paraphrased questions (OpenUnlearning's eval.tofu.question_key).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise UsageError("--batch-size and --max-new-tokens must be positive")
    template = get_template(template) if isinstance(template, str) else template
    plan = plan_evaluation(data, forget_split, template, retain_logs, ds_size, max_new_tokens, convention)

    model.eval()
    passes = _Passes(model, tokenizer, template, batch_size, max_new_tokens)
    passes.question_key = question_key
    plan.meta["question_key"] = question_key
    leaves: dict[str, Entry] = {}
    answer_stats: dict[str, list[TokenStats]] = {}
    for eval_set in eval_sets(forget_split):
        answer_stats[eval_set.key] = passes.run_set(eval_set, plan.records[eval_set.key], leaves)
    leaves.update(_memorisation_entries(answer_stats["forget"], convention_of(plan.meta)))
    leaves.update(_membership_entries(answer_stats, plan.records, template))
    leaves.update(extra_membership_entries(passes, plan.records, answer_stats, reference_model, gradnorm))
    return EvalLog(entries=leaves, meta=plan.meta).completed(plan.retain).to_json()


PARAPHRASABLE_SETS = ("forget", "retain")
QUESTION_KEYS = ("question", "paraphrased_question")


class _Passes:
    """The model passes over one set: answer, paraphrased and perturbed answers, generation."""

    def __init__(self, model, tokenizer, template: Template, batch_size: int, max_new_tokens: int):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.question_key = "question"

    def score(self, questions, answers, desc, with_distribution=False) -> list[TokenStats]:
        return score_answers(
            self.model,
            self.tokenizer,
            self.template,
            questions,
            answers,
            batch_size=self.batch_size,
            with_distribution=with_distribution,
            desc=desc,
        )

    def run_set(self, eval_set: EvalSet, items: list[dict], leaves: dict[str, Entry]) -> list[TokenStats]:
        key = eval_set.key
        # OpenUnlearning's eval.tofu.question_key (configs/eval/tofu.yaml) asks the forget and retain sets'
        # questions by another key, e.g. paraphrased_question; the other sets have only `question`.
        asked = self.question_key if key in PARAPHRASABLE_SETS else "question"
        questions = [_field(item, asked, key) for item in items]
        answer = self.score(questions, [item["answer"] for item in items], f"{key} answers", eval_set.membership)
        if key != "holdout":
            leaves[f"{key}_Q_A_Prob"] = _prob_entry([[s.avg_nll] for s in answer])
        if eval_set.paraphrased:
            para = self.score(
                questions, [_field(item, "paraphrased_answer", key) for item in items], f"{key} paraphrased"
            )
            leaves[f"{key}_Q_A_PARA_Prob"] = _prob_entry([[s.avg_nll] for s in para])
        if eval_set.perturbed:
            leaves[f"{key}_Q_A_PERT_Prob"] = _prob_entry(self._perturbed(questions, items, key), as_list=True)
        if eval_set.generate:
            generations = generate_answers(
                self.model,
                self.tokenizer,
                self.template,
                questions,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                desc=f"{key} generation",
            )
            leaves[f"{key}_Q_A_ROUGE"] = _rouge_entry(questions, [item["answer"] for item in items], generations)
            if key == "forget":
                leaves.update(alternative_rouge_entries(questions, items, generations))
        return answer

    def _perturbed(self, questions, items, key) -> list[list[float]]:
        # One pass over every (question, perturbed answer) pair, regrouped per item.
        options = [_as_list(_field(item, "perturbed_answer", key)) for item in items]
        flat_q = [q for q, opts in zip(questions, options) for _ in opts]
        flat_a = [a for opts in options for a in opts]
        stats = self.score(flat_q, flat_a, f"{key} perturbed")
        grouped, start = [], 0
        for opts in options:
            grouped.append([s.avg_nll for s in stats[start : start + len(opts)]])
            start += len(opts)
        return grouped


def _field(item: dict, name: str, key: str):
    if name not in item:
        raise UsageError(f"the {key} evaluation set lacks field {name!r}; use TOFU's *_perturbed splits")
    return item[name]


def _as_list(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UsageError("an evaluation item has an empty perturbed_answer list")
    return values


def _prob_entry(losses: list[list[float]], as_list: bool = False) -> Entry:
    vbi = {}
    for index, item_losses in enumerate(losses):
        probs = m.probability(item_losses).tolist()
        vbi[str(index)] = (
            {"prob": probs, "avg_loss": list(item_losses)}
            if as_list
            else {"prob": probs[0], "avg_loss": item_losses[0]}
        )
    return {"value_by_index": vbi}


def _rouge_entry(questions, answers, generations) -> Entry:
    scores = m.rouge_recalls(generations, answers)
    return {
        "value_by_index": {
            str(i): {**score, "input": q, "ground_truth": a, "generation": g}
            for i, (score, q, a, g) in enumerate(zip(scores, questions, answers, generations))
        }
    }


def _without_eos(values):
    # Labels end with one EOS; OpenUnlearning's token-level metrics leave its prediction out.
    return values[:-1]


def _memorisation_entries(forget: list[TokenStats], convention: Convention) -> dict[str, Entry]:
    floor = convention.extraction_strength_floor
    return {
        "extraction_strength": {
            "value_by_index": {
                str(i): {"score": m.extraction_strength(_without_eos(s.correct), floor)} for i, s in enumerate(forget)
            }
        },
        "exact_memorization": {
            "value_by_index": {
                str(i): {"score": m.exact_memorization(_without_eos(s.correct))} for i, s in enumerate(forget)
            }
        },
    }


_ATTACKS = {
    "mia_loss": lambda stats, text: m.mia_loss_score(stats.avg_nll),
    "mia_zlib": lambda stats, text: m.mia_zlib_score(stats.avg_nll, text),
    "mia_min_k": lambda stats, text: m.mia_min_k_score(_without_eos(stats.token_logprobs)),
    "mia_min_k_plus_plus": lambda stats, text: m.mia_min_k_plus_plus_score(_without_eos(stats.zscores)),
}


def _membership_entries(
    answer_stats: dict[str, list[TokenStats]], records: dict[str, list[dict]], template: Template
) -> dict[str, Entry]:
    entries = {}
    for name, score in _ATTACKS.items():
        entry = {}
        for part in ("forget", "holdout"):
            texts = [template.answer(item["answer"]) for item in records[part]]
            entry[part] = {
                "value_by_index": {
                    str(i): {"score": score(s, t)} for i, (s, t) in enumerate(zip(answer_stats[part], texts))
                }
            }
        entries[name] = entry
    return entries
