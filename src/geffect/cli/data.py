"""`geffect data synth` (write the built-in benchmark) and `geffect data stats` (record counts per split)."""

from __future__ import annotations

import argparse
import json
import sys

from geffect.data.synth import write_benchmark
from geffect.data.tofu import FORGET_SPLITS, split_counts, write_slice


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="built-in benchmark and data set statistics")
    commands = parser.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="write the built-in TOFU-shaped benchmark of fictitious authors")
    synth.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    synth.add_argument("--authors", type=int, default=100, help="number of authors in full (10-500; default 100)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(func=run_synth)

    cut = commands.add_parser(
        "slice",
        help="a TOFU folder cut to a forget split's authors plus the first N retain authors (small machines)",
        description="Write a TOFU-layout folder with the forget split's authors and the first N retain authors; "
        "full, the retain split and retain_perturbed are cut to match, the other evaluation sets are copied, "
        "and SLICE.json records the slice (runs and evaluations on the folder record it too).",
    )
    cut.add_argument("--data", required=True, help="a TOFU-layout folder or a hub id such as locuslab/TOFU")
    cut.add_argument("--forget", default="forget01", choices=FORGET_SPLITS, help="forget split (default forget01)")
    cut.add_argument("--retain-authors", type=int, required=True, help="retain authors kept (20 QA each)")
    cut.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    cut.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    cut.set_defaults(func=run_slice)

    stats = commands.add_parser("stats", help="print one JSON object: split name -> record count")
    stats.add_argument("--data", required=True, help="a TOFU-layout folder or a hub id such as locuslab/TOFU")
    stats.set_defaults(func=run_stats)


def run_synth(args: argparse.Namespace) -> int:
    counts = write_benchmark(args.out, n_authors=args.authors, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {len(counts)} splits to {args.out}", file=sys.stderr)
    print(json.dumps(counts))
    return 0


def run_slice(args: argparse.Namespace) -> int:
    from geffect.io import staged_output_dir

    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=(args.data,)) as staging:
        record = write_slice(args.data, args.forget, args.retain_authors, staging)
    print(json.dumps(record))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    print(json.dumps(split_counts(args.data)))
    return 0
