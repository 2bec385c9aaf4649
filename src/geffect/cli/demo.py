"""`geffect demo`: the built-in CPU study (packaged config `builtin-cpu.yaml`) end to end, with its report."""

from __future__ import annotations

import argparse
from importlib import resources

DEMO_CONFIG = "builtin-cpu.yaml"


def demo_config_text() -> str:
    return resources.files("geffect").joinpath("resources", "studies", DEMO_CONFIG).read_text(encoding="utf-8")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the paper's comparison on the built-in benchmark with a tiny model, on CPU (about 15 minutes)",
        description="A rerun reuses finished stages (models, runs, evaluations) from --out.",
    )
    parser.add_argument("--out", default="geffect-demo", help="output folder (default: ./geffect-demo)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs without running anything")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out from scratch (the old one is kept aside until the new demo has finished)",
    )
    parser.add_argument("--show-config", action="store_true", help="print the demo's configuration (YAML) and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from geffect.cli.study import quiet_library_progress
    from geffect.study import parse_config, run_study

    quiet_library_progress()
    text = demo_config_text()
    if args.show_config:
        print(text, end="")
        return 0
    config = parse_config(yaml.safe_load(text))
    result = run_study(config, args.out, dry_run=args.dry_run, overwrite=args.overwrite)
    if result.index is not None:
        print(result.index)
    return 0
