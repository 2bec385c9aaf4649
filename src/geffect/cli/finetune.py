"""`geffect finetune`: train the target model (split full) or a retain model (retain90, ...) on QA data."""

from __future__ import annotations

import argparse

from geffect.data.templates import TEMPLATES


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
    parser.add_argument("--data", required=True, help="TOFU-shaped folder of JSON Lines files, or a hub id (locuslab/TOFU)")
    parser.add_argument("--split", default="full", help="training split: full (target model) or retain90/95/99 (retain models)")
    parser.add_argument("--model", default="tiny", help="'tiny' (built from scratch on the data), a save_pretrained folder or a hub id")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 14 for tiny (TinyPreset), 5 otherwise")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate; default: TinyPreset for tiny, 1e-5 otherwise")
    parser.add_argument("--batch-size", type=int, default=None, help="default: TinyPreset for tiny, 16 otherwise")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation (tiny) and data order")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (for quick checks)")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                        help="prompt template; default: plain for tiny, by model family otherwise")
    parser.add_argument("--no-general", action="store_true", help="do not add the general corpus (general.json)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="score exact match on a fixed, evenly spaced sample of at most N records (default: all; 0 skips)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="bf16 autocast (fp32 weights) or fp32; auto: bf16 where the hardware multiplies bf16 natively "
                             "(GPUs with bf16, CPUs with AMX or AVX512-BF16). Default: fp32 for tiny, auto otherwise")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geffect.finetune import finetune

    result = finetune(
        data=args.data,
        split=args.split,
        model=args.model,
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        include_general=not args.no_general,
        template=args.template,
        overwrite=args.overwrite,
        eval_limit=args.eval_limit,
        precision=args.precision,
    )
    print(f"saved {result.out} ({result.steps} steps, {result.train_seconds:.1f} s training, final loss {result.last_loss:.4f})")
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
