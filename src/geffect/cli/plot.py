"""`geffect plot RUN`: the G-effect figures of one unlearning run, as PNG files.

The figures are drawn into a staging folder that replaces the output folder only once all are written;
an output folder that already holds figures is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geffect.errors import UsageError
from geffect.runfolder import RunFolder


def register(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="write the G-effect figures (PNG) of an unlearning run folder")
    parser.add_argument("run", help=f"an unlearning run folder (holding {RunFolder.LOG} and {RunFolder.GEFFECT})")
    parser.add_argument("--out", help=f"folder for the PNG files (default: RUN/{RunFolder.FIGURES})")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that holds figures")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geffect.io import staged_output_dir
    from geffect.reports.geffect_plots import plot_run
    from geffect.reports.runfiles import read_run

    read_run(args.run)  # a missing, non-run or corrupt folder fails before anything is drawn
    out = Path(args.out) if args.out is not None else RunFolder(args.run).figures_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; name a folder for the figures")
    with staged_output_dir(out, overwrite=args.overwrite, inputs=(args.run,)) as stage:
        written = plot_run(args.run, stage)
        if not written:
            raise UsageError(f"{args.run} has no G-effects to plot; run unlearn with --track-geffect")
    for path in written.values():
        print(out / Path(path).name)
    print(f"wrote {len(written)} figure(s) to {out}", file=sys.stderr)
    return 0
