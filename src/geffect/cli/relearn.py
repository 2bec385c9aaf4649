"""`geffect relearn`: the relearning attack on an unlearned model (fine-tune on N forget items for S steps,
then the TOFU evaluation).

    geffect relearn --model runs/npo/model --data data/bench --forget forget10 --samples 20 --steps 10 --out runs/npo/relearn
"""

from __future__ import annotations

import argparse
import json

from geffect.evaluation.config import EvalConfig
from geffect.options import add_arguments, from_args
from geffect.training.relearn import RelearnConfig

HELP = "relearning attack: fine-tune a model on N forget items for S steps, then evaluate it (TOFU metrics)"


def register(subparsers) -> None:
    parser = subparsers.add_parser("relearn", help=HELP, description=HELP)
    add_arguments(parser.add_argument_group("attack"), RelearnConfig)
    add_arguments(parser.add_argument_group("evaluation"), EvalConfig, only=["ds_size", "max_new_tokens"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geffect.training.relearn import relearn

    document = relearn(from_args(RelearnConfig, args), from_args(EvalConfig, args))
    print(json.dumps(document["summary"]))
    return 0
