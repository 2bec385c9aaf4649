"""`geffect study CONFIG.yaml`: a whole study (or its plan, with --dry-run) from one configuration file."""

from __future__ import annotations

import argparse
from pathlib import Path


def quiet_library_progress() -> None:
    """transformers' own bars (loading and writing weights, once per model) would bury the stage lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a study from a YAML file: models, references, every method with G-effects, evaluation, report",
        description="Stages already finished in OUT are skipped on a rerun; the annotated configurations are in "
        "examples/*.yaml, the whole workflow in README.md (`geffect demo --show-config` prints the built-in one).",
    )
    parser.add_argument("config", help="study configuration (YAML), e.g. examples/tofu-phi.yaml")
    parser.add_argument("--out", help="output folder (default: runs/<name in the config>)")
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve the configuration and list the runs; load and download nothing"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start OUT afresh instead of reusing its finished stages (the old OUT is kept aside as .OUT.previous "
        "until the new study has finished)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_library_progress()
    from geffect.study import load_config, run_study

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / config.name
    result = run_study(config, out, dry_run=args.dry_run, overwrite=args.overwrite)
    if result.index is not None:
        print(result.index)
    return 0
