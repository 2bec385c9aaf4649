"""The options of a TOFU evaluation's scoring (`geffect eval`, a study's `eval:` section), declared once."""

from __future__ import annotations

from dataclasses import dataclass

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

    def validate(self) -> None:
        check(self)
