"""`geffect plot RUN`: the G-effect figures of one unlearning run, as PNG files."""

from __future__ import annotations

import argparse
import sys

from geffect.runfolder import RunFolder


def register(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="write the G-effect figures (PNG) of an unlearning run folder")
    parser.add_argument("run", help=f"an unlearning run folder (holding {RunFolder.LOG} and {RunFolder.GEFFECT})")
    parser.add_argument("--out", help=f"folder for the PNG files (default: RUN/{RunFolder.FIGURES})")
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
