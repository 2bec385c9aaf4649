"""The options of a TOFU evaluation's scoring (`geffect eval`, a study's `eval:` section), declared once."""

from __future__ import annotations

from dataclasses import dataclass

from geffect.evaluation.conventions import CONVENTIONS, DEFAULT_CONVENTION
from geffect.evaluation.generation import MAX_NEW_TOKENS
from geffect.options import at_least, check, option

DEFAULT_BATCH_SIZE = 32


@dataclass
class EvalConfig:
    ds_size: int | None = option(
        None, "score only the first N items of each set (legacy TOFU: 300); default all", check=at_least(1), metavar="N"
    )
    batch_size: int = option(DEFAULT_BATCH_SIZE, "items per forward pass and per generation batch", check=at_least(1))
    max_new_tokens: int = option(MAX_NEW_TOKENS, "greedy generation length for ROUGE", check=at_least(1))
    convention: str = option(
        DEFAULT_CONVENTION,
        "formulas where the references differ: geffect, openunlearning (truth ratio +1e-10, extraction strength "
        "floored at 1/T) or legacy (first 300 items); recorded in TOFU_EVAL.json",
        choices=tuple(CONVENTIONS),
    )
    reference_model: str | None = option(
        None, "model folder for OpenUnlearning's reference MIA (mia_reference), e.g. the retain model", metavar="PATH"
    )
    question_key: str = option(
        "question",
        "ask the forget and retain sets' `question` or their `paraphrased_question` (OpenUnlearning's question_key)",
        choices=("question", "paraphrased_question"),
    )
    mia_gradnorm: bool = option(False, "also run the gradient-norm MIA (mia_gradnorm: one backward per item)")

    def validate(self) -> None:
        check(self)
