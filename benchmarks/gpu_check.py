"""One-GPU check of the trainer and the in-run G-effect tracker, in at most about 8 minutes; prints one table.

    python benchmarks/gpu_check.py              # on a machine with one CUDA GPU (nothing is downloaded)
    python benchmarks/gpu_check.py --cpu-smoke  # the same sections on the CPU with a tiny model (the test suite)

Sections, on a randomly initialised Llama-architecture model built from a config (about 1B parameters in
bfloat16 on the GPU; a 2-layer one for the smoke run) and the built-in benchmark:
1. tracking cost: median step time tracked / untracked and with instance contributions, for GA, GradDiff,
   NPO+KL and WGA+KL, and the tracker's extra peak GPU memory in gradient copies (CUDA only);
2. per-item G-effects of the first step in bfloat16 against the same in float32 (relative L2 error);
3. steps per second of `geffect unlearn` (untracked GA) against a bare PyTorch loop over the same batches;
4. a one-GPU run under FSDP and under DeepSpeed ZeRO-3 (where they import and a GPU is present): the largest
   relative difference of their G-effects from the plain run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_geffect import StepClock  # noqa: E402  (the same step clock as the tracking benchmark)

from geffect.data.synth import write_benchmark  # noqa: E402
from geffect.effects.tracker import GEffectTracker, TrackerConfig  # noqa: E402
from geffect.io import read_jsonl  # noqa: E402
from geffect.models.tiny import build_tiny  # noqa: E402
from geffect.training.config import UnlearnConfig  # noqa: E402
from geffect.training.unlearn import unlearn  # noqa: E402

METHODS = ("GA", "GradDiff", "NPO+KL", "WGA+KL")
SMOKE_METHODS = ("GA", "NPO+KL")  # the smoke run checks that every section works, not the figures
# About 0.93B parameters (18 layers of hidden 2048, Llama-2 proportions) on the GPU; 2 layers for the smoke run.
SIZES = {
    "gpu": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=16),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}


@dataclasses.dataclass
class Setup:
    work: Path
    data: str
    model: str
    n_params: int
    grad_bytes: int
    dtype: str
    steps: int
    skip: int
    batch_size: int
    smoke: bool
    methods: tuple[str, ...]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU (what the test runs)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run (default 12; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="forget items a step (default 8; smoke 2)")
    parser.add_argument("--methods", nargs="*", help=f"methods of the tracking-cost section (default {METHODS})")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, work: Path) -> Setup:
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; run with --cpu-smoke for the CPU smoke test")
    data = work / "bench"
    write_benchmark(data, n_authors=20, seed=0)
    model, tokenizer = build_tiny(str(data), seed=0, **SIZES["smoke" if smoke else "gpu"])
    folder = work / "model"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    dtype = "float32" if smoke else "bfloat16"
    grad_bytes = n_params * (4 if smoke else 2)
    steps = args.steps or (2 if smoke else 12)
    batch = args.batch_size or (2 if smoke else 8)
    del model
    methods = tuple(args.methods) if args.methods else (SMOKE_METHODS if smoke else METHODS)
    skip = 0 if smoke else 3
    return Setup(work, str(data), str(folder), n_params, grad_bytes, dtype, steps, skip, batch, smoke, methods)


def run_config(s: Setup, method: str, name: str, **changes) -> UnlearnConfig:
    options = dict(
        model=s.model,
        data=s.data,
        out=str(s.work / "runs" / f"{method.replace('+', '_')}-{name}"),
        method=method,
        forget="forget10",
        lr=1e-5,
        epochs=1000,
        max_steps=s.steps,
        batch_size=s.batch_size,
        grad_accum=1,
        warmup_epochs=0.0,
        template="plain",
        dtype=s.dtype,
        mixed_precision="no",
        progress=False,
        overwrite=True,
    )
    options.update(changes)
    return UnlearnConfig(**options)


def _timed(cfg: UnlearnConfig, callbacks: list, skip: int) -> tuple[float, int]:
    clock = StepClock(skip)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    unlearn(cfg, callbacks=[clock, *callbacks])
    return clock.seconds_per_step(), (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)


def tracking_costs(s: Setup) -> list[dict]:
    rows = []
    for method in s.methods:
        cfg = run_config(s, method, "cost")
        tracker = TrackerConfig(probe_batch_size=s.batch_size)
        base, base_peak = _timed(cfg, [], s.skip)
        tracked, tracked_peak = _timed(cfg, [GEffectTracker(tracker)], s.skip)
        instances, instances_peak = _timed(cfg, [GEffectTracker(dataclasses.replace(tracker, instances=True))], s.skip)
        cuda = torch.cuda.is_available()
        rows.append(
            {
                "method": method,
                "untracked_s": base,
                "tracked": tracked / base,
                "instances": instances / base,
                "extra_memory_grads": (tracked_peak - base_peak) / s.grad_bytes if cuda else None,
                "extra_memory_grads_instances": (instances_peak - base_peak) / s.grad_bytes if cuda else None,
            }
        )
    return rows


def _first_items(run_dir: str) -> dict[str, float]:
    record = read_jsonl(Path(run_dir) / "geffect.jsonl")[0]
    return {f"{side}:{k}": v for side in ("u", "r") for k, v in record[f"items_{side}"].items()}


def _relative_error(got: dict[str, float], want: dict[str, float]) -> float:
    keys = sorted(want)
    diff = math.sqrt(sum((got[k] - want[k]) ** 2 for k in keys))
    return diff / max(math.sqrt(sum(want[k] ** 2 for k in keys)), 1e-30)


def bf16_against_fp32(s: Setup) -> dict:
    """Per-item G-effects of step 1 (identical weights up to the dtype) under bf16 and fp32 weights."""
    tracker = TrackerConfig(instances=True, probe_batch_size=s.batch_size)
    items = {}
    for dtype in ("float32", "bfloat16"):
        cfg = run_config(s, "NPO+KL", f"items-{dtype}", dtype=dtype, max_steps=1)
        unlearn(cfg, callbacks=[GEffectTracker(tracker)])
        items[dtype] = _first_items(cfg.out)
    return {"items": len(items["float32"]), "relative_error": _relative_error(items["bfloat16"], items["float32"])}


def _bare_seconds(s: Setup, steps: int) -> float:
    """Median step of a bare loop: forward of the forget batch, loss.backward, AdamW, same model and shapes."""
    from geffect.data.collate import pad_token_id
    from geffect.data.templates import get_template
    from geffect.data.tofu import load_split
    from geffect.models.loading import load_model_and_tokenizer
    from geffect.training.batches import encode_records

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model_and_tokenizer(s.model, dtype=s.dtype)
    model.to(device).train()
    items = encode_records(tokenizer, get_template("plain"), load_split(s.data, "forget10"), max_length=512)
    pad = pad_token_id(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for step in range(steps):
        chunk = [items[(step * s.batch_size + i) % len(items)] for i in range(s.batch_size)]
        width = max(len(item.input_ids) for item in chunk)
        ids = torch.tensor([item.input_ids + [pad] * (width - len(item.input_ids)) for item in chunk], device=device)
        labels = torch.tensor([item.labels + [-100] * (width - len(item.labels)) for item in chunk], device=device)
        started = time.perf_counter()
        loss = -model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss  # gradient ascent
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[s.skip :])


def trainer_against_bare(s: Setup) -> dict:
    trainer, _ = _timed(run_config(s, "GA", "speed"), [], s.skip)
    bare = _bare_seconds(s, s.steps)
    return {"trainer_steps_per_s": 1 / trainer, "bare_steps_per_s": 1 / bare, "ratio": bare / trainer}


# The repository's launch configurations, run with one process.
ACCELERATE_DIR = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
ACCELERATE_CONFIGS = {"FSDP": ACCELERATE_DIR / "fsdp.yaml", "DeepSpeed ZeRO-3": ACCELERATE_DIR / "deepspeed_zero3.yaml"}


def _available(name: str) -> str | None:
    """Why `name` cannot run here, or None."""
    if not torch.cuda.is_available():
        return "needs a GPU"
    if name.startswith("DeepSpeed"):
        try:
            import deepspeed  # noqa: F401
        except Exception as err:  # deepspeed's import can fail in many ways (no compiler, no CUDA headers)
            return f"deepspeed does not import ({type(err).__name__})"
    return None


def _launched_effects(s: Setup, name: str, config_file: Path | None) -> list[float]:
    """e_u and e_r of each step of a 2-step tracked GA run, plain or under `accelerate launch` with one process."""
    out = s.work / "runs" / f"sharded-{name.split()[0]}"
    argv = ["-m", "geffect", "unlearn", "--model", s.model, "--data", s.data, "--forget", "forget10"]
    argv += ["--method", "GA", "--max-steps", "2", "--batch-size", str(s.batch_size), "--grad-accum", "1"]
    argv += ["--warmup-epochs", "0", "--template", "plain", "--track-geffect", "--out", str(out), "--overwrite"]
    argv += ["--no-progress", "--mixed-precision", "no"]
    command = [sys.executable, *argv]
    if config_file is not None:
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(config_file), "--num_processes", "1"]
        command = [sys.executable, *launch, "--mixed_precision", "no", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{name} run failed: {tail[0]}")
    return [r[f"e_{side}"]["total"] for r in read_jsonl(out / "geffect.jsonl") for side in ("u", "r")]


def sharded_runs(s: Setup) -> list[dict]:
    rows = []
    plain = None
    for name, config_file in ACCELERATE_CONFIGS.items():
        reason = _available(name)
        if reason is not None:
            rows.append({"backend": name, "skipped": reason})
            continue
        try:
            plain = plain or _launched_effects(s, "plain", None)
            got = _launched_effects(s, name, config_file)
        except RuntimeError as err:
            rows.append({"backend": name, "skipped": str(err)})
            continue
        worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got, plain))
        rows.append({"backend": name, "max_relative_difference": worst})
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(s: Setup, results: dict, seconds: float) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)"
    print(f"gpu_check on {device}: Llama {s.n_params / 1e9:.3f}B parameters, {s.dtype}, batch {s.batch_size}, ")
    print(f"{s.steps} steps a run ({s.skip} warm-up), median step")
    print("| method | untracked s/step | tracked / untracked | + instances | extra memory / grad | (+instances) |")
    print("|---|---|---|---|---|---|")
    for row in results["tracking"]:
        print(
            f"| {row['method']} | {row['untracked_s']:.4f} | {row['tracked']:.2f} | {row['instances']:.2f} | "
            f"{_fmt(row['extra_memory_grads'], '.2f')} | {_fmt(row['extra_memory_grads_instances'], '.2f')} |"
        )
    b = results["bf16"]
    print(f"per-item G-effects bf16 vs fp32: relative error {b['relative_error']:.3g} over {b['items']} items")
    t = results["speed"]
    print(
        f"trainer {t['trainer_steps_per_s']:.2f} steps/s, bare loop {t['bare_steps_per_s']:.2f} steps/s "
        f"(trainer / bare {t['ratio']:.2f})"
    )
    for row in results["sharded"]:
        detail = row.get("skipped") or f"G-effects within {row['max_relative_difference']:.2g} of the plain run"
        print(f"{row['backend']}: {'skipped: ' if 'skipped' in row else ''}{detail}")
    print(f"gpu_check took {seconds:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        s = prepare(args, Path(scratch))
        results = {
            "tracking": tracking_costs(s),
            "bf16": bf16_against_fp32(s),
            "speed": trainer_against_bare(s),
            "sharded": sharded_runs(s),
        }
        seconds = time.perf_counter() - started
        print_table(s, results, seconds)
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
