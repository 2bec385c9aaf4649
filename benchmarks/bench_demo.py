"""Wall time of `geffect demo` from an empty cache, stage by stage (acceptance: at most 15 minutes on 2 CPU cores).

    .venv/bin/python benchmarks/bench_demo.py [--out DIR] [--keep] [--config FILE]

Runs the packaged demo study (or --config) into a fresh folder, then prints the time of every stage (read
back from the study's timings.json), the sums per kind of stage, and the total against the budget.
A second invocation with the same --out and --keep shows the cached rerun (every stage skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

BUDGET_SECONDS = 15 * 60


def point_seconds(out: Path) -> list[float]:
    """Seconds of every point scored along the runs (geffect.study.along writes them beside each point)."""
    from geffect.study.along import POINT_TIMING

    return [
        json.loads(p.read_text(encoding="utf-8"))["seconds"]
        for p in sorted(out.glob(f"runs/*/points/*/{POINT_TIMING}"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="study folder (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="reuse --out if it exists (a cached rerun) and keep it")
    parser.add_argument("--config", help="a study YAML instead of the packaged demo configuration")
    args = parser.parse_args()

    from geffect.cli.demo import demo_config_text
    from geffect.cli.study import quiet_library_progress
    from geffect.study import load_config, parse_config, run_study

    quiet_library_progress()

    config = load_config(args.config) if args.config else parse_config(yaml.safe_load(demo_config_text()))
    temporary = args.out is None
    out = Path(args.out or tempfile.mkdtemp(prefix="geffect-bench-demo-"))
    if out.exists() and not args.keep and not temporary:
        shutil.rmtree(out)
    import torch

    print(
        f"bench_demo: {config.name}, {len(config.methods)} method entries, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, out {out}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    try:
        run_study(config, out)
        total = time.perf_counter() - started
        stages = json.loads((out / "timings.json").read_text(encoding="utf-8"))["stages"]
        points = point_seconds(out)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print(f"{'stage':<10} {'item':<42} {'seconds':>8}  status")
    per_kind: dict[str, list[float]] = defaultdict(list)
    for stage in stages:
        print(
            f"{stage['stage']:<10} {stage['name']:<42} {stage['seconds']:8.1f}  {'cached' if stage['cached'] else 'ran'}"
        )
        if not stage["cached"]:
            per_kind[stage["stage"]].append(stage["seconds"])
    print()
    for kind, seconds in per_kind.items():
        print(f"{kind:<10} {len(seconds):3d} x  mean {sum(seconds) / len(seconds):7.1f} s  sum {sum(seconds):7.1f} s")
    if config.side_by_side:
        print("(stages of one kind may have run side by side, one process per core: their sum exceeds their wall time)")
    if points:
        print(
            f"{'points':<10} {len(points):3d} x  mean {sum(points) / len(points):7.1f} s  sum {sum(points):7.1f} s"
            "  (evaluation along the runs, inside the unlearn stages above)"
        )
    verdict = "within" if total <= BUDGET_SECONDS else "OVER"
    print(f"total wall time {total:.1f} s ({total / 60:.1f} min): {verdict} the {BUDGET_SECONDS // 60}-minute budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
