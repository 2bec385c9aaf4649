"""`geffect finetune`: train the target model (split full) or a retain model (retain90, ...) on QA data."""

from __future__ import annotations

import argparse

from geffect import options
from geffect.training.finetune_config import FinetuneConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a target or retain model (tiny from scratch, or any causal LM)",
        description=(
            "Fine-tune on one split (full for the target model, retain90/95/99 for retain models) plus the general "
            "corpus general.json when the data folder has one. Ends by printing the fraction of the split's "
            "answers the model reproduces exactly under greedy decoding."
        ),
    )
    options.add_arguments(parser, FinetuneConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geffect.training.finetune import finetune

    result = finetune(options.from_args(FinetuneConfig, args))
    print(
        f"saved {result.out} ({result.steps} steps, {result.train_seconds:.1f} s training, final loss {result.last_loss:.4f})"
    )
    if result.eval_items:
        hits = round(result.accuracy * result.eval_items)
        scope = "all" if result.eval_items == result.split_items else f"a fixed sample of {result.eval_items} of"
        print(
            f"exact match: {result.accuracy:.4f} ({hits}/{result.eval_items} answers reproduced exactly under greedy "
            f"decoding; {scope} {result.split_items} records of split {args.split})"
        )
    else:
        print("exact match: skipped (--eval-limit 0)")
    return 0
