"""`geffect` entry point: bad input ends with one line on stderr and exit code 2, a diverged training run with
one line and exit code 1, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from geffect import __version__
from geffect.cli.interrupts import Terminated, interrupted_line, sigterm_raises
from geffect.errors import TrainingDiverged, UsageError

# Each module registers its own sub-command(s).
COMMAND_MODULES = (
    "data",
    "finetune",
    "unlearn",
    "relearn",
    "eval",
    "effects",
    "plot",
    "study",
    "demo",
    "models",
    "methods",
)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we keep it to one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="geffect", description="LLM unlearning with G-effects and TOFU evaluation")
    parser.add_argument("--version", action="version", version=f"geffect {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"geffect.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with sigterm_raises():
            result = args.func(args)
    except UsageError as err:
        print(f"geffect: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"geffect: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted_line(argv, "Ctrl-C"), file=sys.stderr)
        return 130
    except Terminated:
        print(interrupted_line(argv, "SIGTERM"), file=sys.stderr)
        return 143
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
