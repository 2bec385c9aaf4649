"""`geffect plot RUN`: the G-effect figures of one unlearning run, as PNG files."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="write the G-effect figures (PNG) of an unlearning run folder")
    parser.add_argument("run", help="an unlearning run folder (holding log.jsonl and geffect.jsonl)")
    parser.add_argument("--out", help="folder for the PNG files (default: RUN/figures)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geffect.errors import UsageError
    from geffect.reports.geffect_plots import plot_run

    written = plot_run(args.run, args.out)
    if not written:
        raise UsageError(f"{args.run} has no G-effects to plot; run unlearn with --track-geffect")
    for path in written.values():
        print(path)
    print(f"wrote {len(written)} figure(s)", file=sys.stderr)
    return 0
