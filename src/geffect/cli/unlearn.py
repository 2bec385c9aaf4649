"""`geffect unlearn`: run an unlearning objective on a model (also under `accelerate launch`).

    geffect unlearn --model runs/target/model --data data/bench --forget forget10 --method NPO+KL --out runs/npo
    accelerate launch --config_file examples/accelerate/cpu_2proc.yaml -m geffect unlearn ... --grad-accum 2

Every option is declared once, in UnlearnConfig and TrackerConfig; the arguments are derived from them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from geffect.effects.config import TrackerConfig
from geffect.errors import UsageError
from geffect.options import add_arguments, fields, from_args, parse_pairs
from geffect.training.config import UnlearnConfig

# The objective's options among UnlearnConfig's: `geffect effects` takes them too.
OBJECTIVE_OPTIONS = ("method", "retain_loss", "preset", "gamma", "alpha", "hparams", "kl_mask")
HELP = "unlearn a forget split with an objective (GA, NPO, SimNPO, WGA, TNPO, ...); writes RUN/model and RUN/log.jsonl"


def register(subparsers) -> None:
    parser = subparsers.add_parser("unlearn", help=HELP, description=HELP)
    build_unlearn_parser(parser)
    parser.set_defaults(func=run)


def build_unlearn_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every `unlearn` option; other commands (e.g. G-effect tracking) add their own groups to `parser`."""
    run = parser.add_argument_group("unlearning run")
    add_arguments(run, UnlearnConfig, only=[f.name for f in fields(UnlearnConfig) if f.name not in OBJECTIVE_OPTIONS])
    add_objective_arguments(parser.add_argument_group("objective"))
    add_tracking_arguments(parser)
    return parser


def add_objective_arguments(group) -> None:
    """The objective's options (also `geffect effects`'), with the `--beta` shorthand."""
    add_arguments(group, UnlearnConfig, only=OBJECTIVE_OPTIONS)
    group.add_argument("--beta", type=float, default=None, help="the method's beta (shorthand for --hparam beta=B)")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("G-effect tracking (docs/geffect-format.md)")
    group.add_argument(
        "--track-geffect", action="store_true", help="append one line per measured step to RUN/geffect.jsonl"
    )
    add_arguments(group, TrackerConfig)


def parse_hparams(items: Sequence[str], beta: float | None) -> dict[str, float]:
    """`--hparam KEY=VALUE` items, with the `--beta` shorthand merged in."""
    hparams = parse_pairs(items, "--hparam", float)
    if beta is not None:
        if "beta" in hparams and hparams["beta"] != beta:
            raise UsageError(f"--beta {beta:g} and --hparam beta={hparams['beta']:g} disagree; give one")
        hparams["beta"] = beta
    return hparams


def unlearn_config(args: argparse.Namespace) -> UnlearnConfig:
    return from_args(UnlearnConfig, args, hparams=parse_hparams(args.hparams, args.beta))


def build_callbacks(args: argparse.Namespace) -> list:
    """Step callbacks requested on the command line: the G-effect tracker (with --track-geffect)."""
    if not args.track_geffect:
        _refuse_tracking_options(args)
        return []
    from geffect.effects.tracker import GEffectTracker

    return [GEffectTracker(from_args(TrackerConfig, args))]


def _refuse_tracking_options(args: argparse.Namespace) -> None:
    """A G-effect option without --track-geffect would be silently ignored: refuse it instead."""
    from geffect.options import flag_of

    given = from_args(TrackerConfig, args)
    for f in fields(TrackerConfig):
        if getattr(given, f.name) != getattr(TrackerConfig(), f.name):
            raise UsageError(f"{flag_of(TrackerConfig, f)} needs --track-geffect; add it, or drop the option")


def run(args: argparse.Namespace) -> int:
    from geffect.training.unlearn import unlearn

    result = unlearn(unlearn_config(args), callbacks=build_callbacks(args))
    if result.summary:
        last = result.last_log or {}
        print(
            f"unlearned with {result.summary['method']} for {result.steps} steps; "
            f"forget risk {last.get('forget_risk', result.summary.get('forget_risk_last') or float('nan')):.4g}; "
            f"model: {result.model_dir}"
        )
        for warning in result.summary.get("warnings", []):
            print(f"geffect: warning: {warning}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m geffect.cli.unlearn ...` (equivalent to `geffect unlearn ...`; what accelerate launches)."""
    from geffect.cli.main import main as geffect_main

    return geffect_main(["unlearn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
