"""`geffect data synth` (write the built-in benchmark) and `geffect data stats` (record counts per split)."""

from __future__ import annotations

import argparse
import json
import sys

from geffect.data.synth import write_benchmark
from geffect.data.tofu import split_counts


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="built-in benchmark and data set statistics")
    commands = parser.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="write the built-in TOFU-shaped benchmark of fictitious authors")
    synth.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    synth.add_argument("--authors", type=int, default=100, help="number of authors in full (10-500; default 100)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(func=run_synth)

    stats = commands.add_parser("stats", help="print one JSON object: split name -> record count")
    stats.add_argument("--data", required=True, help="a TOFU-layout folder or a hub id such as locuslab/TOFU")
    stats.set_defaults(func=run_stats)


def run_synth(args: argparse.Namespace) -> int:
    counts = write_benchmark(args.out, n_authors=args.authors, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {len(counts)} splits to {args.out}", file=sys.stderr)
    print(json.dumps(counts))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    print(json.dumps(split_counts(args.data)))
    return 0
