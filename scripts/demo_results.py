"""The README's demo results, written from the files of one finished demo folder (nothing typed by hand).

    .venv/bin/python scripts/demo_results.py DEMO_DIR [--command "geffect demo ..."] [--compare OTHER_DIR]

Prints Markdown: which run (date of its report, CPU model from lscpu, command, wall time from timings.json),
the per-method table of results.md (mean and spread over seeds), and each claim of claims.json with its
verdict and per-seed values; with --compare, whether a second run of the same command wrote the same
results.csv and claims.json, byte for byte. Paste it into the README's "What the demo shows" section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def per_method_table(results_md: str) -> str:
    """The '## Per method' section of results.md, without its heading."""
    section = results_md.split("## Per method", 1)[1].split("\n## ", 1)[0]
    return section.strip()


def finetune_lines(demo: Path) -> list[str]:
    lines = []
    for path in sorted(demo.glob("models/*/finetune.json")):
        info = json.loads(path.read_text(encoding="utf-8"))
        match = info.get("exact_match") or {}
        lines.append(
            f"- `{path.parent.name}` model: exact match {match.get('accuracy')} on {match.get('items')} of its "
            f"{match.get('of')} training answers ({info.get('steps')} fine-tuning steps)"
        )
    return lines


def first_step_lines(demo: Path) -> list[str]:
    """Saturation of the target: per run, |e_u| of the first step over the largest |e_u| of the run (a target
    that reproduces its answers with probability ~1 has ~0 forget-risk gradients at the start)."""
    ratios = []
    for path in sorted(demo.glob("runs/*/geffect.jsonl")):
        values = [abs(json.loads(line)["e_u"]["total"]) for line in path.read_text(encoding="utf-8").splitlines()]
        if values and max(values) > 0:
            ratios.append((path.parent.name, values[0] / max(values)))
    if not ratios:
        return []
    low, high = min(r for _, r in ratios), max(r for _, r in ratios)
    return [f"- first step's |e_u| over the run's largest |e_u|: {low:.3g} to {high:.3g} over {len(ratios)} runs"]


def wall_time_lines(demo: Path) -> list[str]:
    """The wall time that benchmarks/bench_demo.py measured for this folder (its bench_demo.json), if it did."""
    path = demo / "bench_demo.json"
    if not path.exists():
        return []
    bench = json.loads(path.read_text(encoding="utf-8"))
    total, budget = bench["total_seconds"], bench["budget_seconds"]
    parts = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in bench["wall_by_stage"].items())
    points = bench["points"]
    verdict = (
        "" if budget is None else f", {'within' if total <= budget else 'over'} the {budget / 60:.0f}-minute budget"
    )
    return [
        f"- wall time (`benchmarks/bench_demo.py`, {bench['cpus']} cores): {total:.0f} s ({total / 60:.1f} min)"
        f"{verdict}; by stage: {parts} (side-by-side stages by their wall "
        f"clock); the {points['count']} points along the runs took {points['process_seconds']:.0f} process-seconds "
        f"of the unlearn stages"
    ]


def same_files_lines(demo: Path, other: Path) -> list[str]:
    """Whether `other`, a second run of the same command, wrote byte-identical results (acceptance: the same
    seeds on the same machine give identical numbers)."""
    lines = []
    for name in ("results.csv", "claims.json"):
        mine, theirs = (demo / name).read_bytes(), (other / name).read_bytes()
        digest = hashlib.sha256(mine).hexdigest()[:12]
        same = "byte-identical to" if mine == theirs else "DIFFERENT from"
        lines.append(f"- `{name}` (sha256 `{digest}…`) is {same} that of a second run of the same command")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished demo folder (geffect demo --out DIR)")
    parser.add_argument("--command", default="geffect demo", help="the command that produced it")
    parser.add_argument("--compare", type=Path, help="a second finished run of the same command")
    args = parser.parse_args()
    demo = args.demo
    index = demo / "index.html"
    if not index.exists() or not (demo / "claims.json").exists():
        print(f"{demo} is not a finished demo folder (no index.html or claims.json)", file=sys.stderr)
        return 2
    stages = json.loads((demo / "timings.json").read_text(encoding="utf-8"))["stages"]
    when = datetime.fromtimestamp(index.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seconds = sum(s["seconds"] for s in stages)
    out = [
        f"Run: `{args.command}`, report written {when}, CPU {cpu_model()}; sum of stage times "
        f"{seconds / 60:.1f} min (side-by-side stages counted each; `benchmarks/bench_demo.py` measures wall time).",
        "",
        *wall_time_lines(demo),
        *(same_files_lines(demo, args.compare) if args.compare else []),
        *finetune_lines(demo),
        *first_step_lines(demo),
        "",
        per_method_table((demo / "results.md").read_text(encoding="utf-8")),
        "",
        "Claims (`claims.json`):",
        "",
    ]
    for claim in json.loads((demo / "claims.json").read_text(encoding="utf-8"))["claims"]:
        out.append(f"{claim['id']}. {claim['claim']}: **{claim['verdict']}** ({claim['quantity']}).")
        for seed in claim["per_seed"]:
            values = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} —" for k, v in seed["values"].items())
            out.append(f"   - seed {seed['seed']}: {'holds' if seed['holds'] else 'does not hold'}; {values}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
