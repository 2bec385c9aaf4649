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

from geffect.io import atomic_write_json

BUDGET_SECONDS = 15 * 60
BENCH_FILE = "bench_demo.json"  # written into a kept --out


def point_seconds(out: Path) -> list[float]:
    """Seconds of every point scored along the runs (geffect.study.along writes them beside each point)."""
    from geffect.study.along import POINT_TIMING

    return [
        json.loads(p.read_text(encoding="utf-8"))["seconds"]
        for p in sorted(out.glob(f"runs/*/points/*/{POINT_TIMING}"))
    ]


def wall_summary(
    stages: list[dict],
    side_by_side: list[dict],
    points: list[float],
    total: float,
    budget: float | None = BUDGET_SECONDS,
) -> dict:
    """Wall-clock seconds per kind of stage: the stages that ran one after the other by their own times, plus
    each side-by-side group by its wall clock (timings.json of geffect.study.pipeline)."""
    wall: dict[str, float] = defaultdict(float)
    for stage in stages:
        if not stage["cached"] and not stage.get("side_by_side", False):
            wall[stage["stage"]] += stage["seconds"]
    for group in side_by_side:
        wall[group["stage"]] += group["seconds"]
    return {
        "total_seconds": total,
        "budget_seconds": budget,  # the demo's; None for another --config
        "wall_by_stage": dict(wall),
        "process_seconds_by_stage": {
            kind: sum(s["seconds"] for s in stages if s["stage"] == kind and not s["cached"]) for kind in wall
        },
        "points": {"count": len(points), "process_seconds": sum(points)},
        "cpus": os.cpu_count(),
    }


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
    if out.exists() and any(out.iterdir()) and not args.keep and not temporary:
        print(f"bench_demo: {out} exists; pass --keep to rerun into it (cached stages) or choose another --out")
        return 2
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
        timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
        stages = timings["stages"]
        points = point_seconds(out)
        budget = None if args.config else BUDGET_SECONDS
        summary = wall_summary(stages, timings.get("side_by_side", []), points, total, budget)
        if not temporary or args.keep:
            # what scripts/demo_results.py quotes in the README, so that no time there is typed by hand
            atomic_write_json(out / BENCH_FILE, summary)
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
        print(
            f"{kind:<10} {len(seconds):3d} x  mean {sum(seconds) / len(seconds):7.1f} s  sum {sum(seconds):7.1f} s"
            f"  wall {summary['wall_by_stage'][kind]:7.1f} s"
        )
    if config.side_by_side:
        print("(stages of one kind may have run side by side, one process per core: their sum exceeds their wall time)")
    if points:
        print(
            f"{'points':<10} {len(points):3d} x  mean {sum(points) / len(points):7.1f} s  sum {sum(points):7.1f} s"
            "  (evaluation along the runs, inside the unlearn stages above)"
        )
    line = f"total wall time {total:.1f} s ({total / 60:.1f} min)"
    if budget is not None:
        line += f": {'within' if total <= budget else 'OVER'} the {budget // 60}-minute budget"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
