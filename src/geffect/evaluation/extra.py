"""The evaluation's metrics beyond legacy TOFU, from OpenUnlearning (d3d7cf9): ROUGE against the paraphrased and
perturbed answers, and the reference and gradient-norm membership attacks.

- ``forget_Q_A_PARA_ROUGE`` / ``forget_Q_A_PERT_ROUGE`` (configs/eval/tofu_metrics/forget_Q_A_PARA_ROUGE.yaml,
  _PERT_ROUGE.yaml, handler ``rouge`` in src/evals/metrics/memorization.py): the greedy generation for the forget
  question scored against ``paraphrased_answer`` / each ``perturbed_answer``. Greedy decoding of one prompt is
  one text, so the forget set's generations are reused.
- ``mia_reference`` (src/evals/metrics/mia/reference.py ReferenceAttack): target loss minus reference loss.
- ``mia_gradnorm`` (src/evals/metrics/mia/gradnorm.py, p = 2): see geffect.evaluation.gradnorm.
"""

from __future__ import annotations

from typing import Any, Sequence

from geffect.evaluation import metrics as m
from geffect.evaluation.registry import Entry


def alternative_rouge_entries(questions: Sequence[str], items: Sequence[dict], generations: Sequence[str]) -> dict:
    """forget_Q_A_PARA_ROUGE and forget_Q_A_PERT_ROUGE (the latter a list per item, one per perturbed answer)."""
    para = m.rouge_recalls(generations, [item["paraphrased_answer"] for item in items])
    pert_answers = [item["perturbed_answer"] for item in items]
    pert_answers = [answers if isinstance(answers, list) else [answers] for answers in pert_answers]
    pert = [m.rouge_recalls([g] * len(answers), answers) for g, answers in zip(generations, pert_answers)]
    para_vbi = {
        str(i): {**score, "input": q, "ground_truth": item["paraphrased_answer"], "generation": g}
        for i, (score, q, item, g) in enumerate(zip(para, questions, items, generations))
    }
    pert_vbi = {
        str(i): {key: [s[key] for s in scores] for key in scores[0]} | {"generation": g}
        for i, (scores, g) in enumerate(zip(pert, generations))
    }
    return {
        "forget_Q_A_PARA_ROUGE": {"value_by_index": para_vbi},
        "forget_Q_A_PERT_ROUGE": {"value_by_index": pert_vbi},
    }


def _attack_entry(scores: dict[str, Sequence[float]]) -> Entry:
    return {
        part: {"value_by_index": {str(i): {"score": float(v)} for i, v in enumerate(values)}}
        for part, values in scores.items()
    }


def extra_membership_entries(
    passes: Any, records: dict[str, list[dict]], answer_stats: dict, reference_model=None, gradnorm: bool = False
) -> dict[str, Entry]:
    """mia_reference (with a reference model) and mia_gradnorm (when asked) on forget vs holdout."""
    from geffect.evaluation.scoring import score_answers

    entries: dict[str, Entry] = {}
    parts = ("forget", "holdout")
    asked = {"forget": getattr(passes, "question_key", "question"), "holdout": "question"}
    qa = {part: ([r[asked[part]] for r in records[part]], [r["answer"] for r in records[part]]) for part in parts}
    if reference_model is not None:
        scores = {}
        for part in parts:
            ref = score_answers(
                reference_model, passes.tokenizer, passes.template, *qa[part], batch_size=passes.batch_size,
                desc=f"{part} reference",
            )  # fmt: skip
            scores[part] = [m.mia_reference_score(s.avg_nll, r.avg_nll) for s, r in zip(answer_stats[part], ref)]
        entries["mia_reference"] = _attack_entry(scores)
    if gradnorm:
        from geffect.evaluation.gradnorm import gradnorm_scores

        entries["mia_gradnorm"] = _attack_entry(
            {part: gradnorm_scores(passes.model, passes.tokenizer, passes.template, *qa[part]) for part in parts}
        )
    return entries


def extra_metric_options(options: Any, dtype: str | None, device) -> dict[str, Any]:
    """`evaluate`'s convention, reference_model (loaded), gradnorm and question_key arguments from EvalConfig-like
    options (`geffect eval`, a study's `eval:` section)."""
    reference = None
    if getattr(options, "reference_model", None):
        from geffect.models.loading import load_model_and_tokenizer

        reference, _ = load_model_and_tokenizer(options.reference_model, dtype=dtype)
        reference.to(device).eval()
    return {
        "convention": getattr(options, "convention", "geffect"),
        "reference_model": reference,
        "gradnorm": bool(getattr(options, "mia_gradnorm", False)),
        "question_key": getattr(options, "question_key", "question"),
    }
