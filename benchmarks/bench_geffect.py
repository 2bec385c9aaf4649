"""Cost of in-run G-effect tracking: step-time ratio tracked / untracked, per method (acceptance 4).

For each method the same unlearning run (`geffect.training.unlearn`, tiny preset model, built-in benchmark)
is timed without tracking, with tracking (unlearning and retaining G-effects, batch estimator, groups and
layers), with tracking plus instance contributions, and with a faithful re-implementation of the paper's
scheme in the same loop: three separate forward and backward passes per batch (forget risk, objective,
retain risk), every gradient copied to the host and smoothed there (EMA 0.6/0.4), dot products on the host.

Targets: tracked/untracked <= 1.6 for methods whose step has a retain pass (GradDiff, NPO+KL, WGA+KL), <= 2.2
for GA; instances add <= 0.5; the tracker's extra peak memory <= one gradient copy. The `+scatter` column
(instances plus the paper's instance scatter, `--geffect-scatter`) is printed for information. Times are the
median step of each run (warm-up left out), the fastest of the interleaved rounds.

Memory: on CUDA, max_memory_allocated of the tracked run minus the untracked one; on the CPU, the peak bytes
of the tensors the tracker's measurement allocates and still holds (a dispatch mode that counts storages as
they are made and freed, in separate short runs, since counting slows every operation down). Both against
the bytes of one gradient copy.

    python benchmarks/bench_geffect.py
    python benchmarks/bench_geffect.py --methods GA NPO+KL --steps 20 --rounds 2

On a real pretrained model (any --model: a name from `geffect models list`, a folder, a .gguf file), on real
TOFU (forget01, its chat template when the model is an instruct model); a step of SmolLM2-135M takes tens of
seconds on two cores, so few steps:

    python benchmarks/bench_geffect.py --model smollm2-135m-instruct --data ../shared/data/tofu --steps 5 --skip 1 --rounds 1 --no-paper
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from geffect.data.synth import write_benchmark
from geffect.effects.budget import storage_key
from geffect.effects.tracker import GEffectTracker, TrackerConfig
from geffect.models.tiny import build_tiny
from geffect.objectives.tokens import score
from geffect.training.config import UnlearnConfig
from geffect.training.unlearn import unlearn

METHODS = ["GA", "GradDiff", "NPO+KL", "WGA+KL"]
LIMITS = {"GA": 2.2}
DEFAULT_LIMIT = 1.6


class StepClock:
    """Stamps every after_backward; the interval between stamps is one full step including callbacks."""

    retain_graph = False

    def __init__(self, skip: int):
        self.skip, self.stamps = skip, {}

    def on_train_begin(self, run):
        pass

    def after_backward(self, run, step):
        self.stamps[step.step] = time.perf_counter()

    def on_train_end(self, run):
        pass

    def seconds_per_step(self) -> float:
        """The median step: this machine is shared, and one step slowed down by another process's burst
        would move a mean by more than the tracker's cost differs between runs."""
        steps = sorted(self.stamps)[self.skip :]
        return statistics.median(self.stamps[b] - self.stamps[a] for a, b in zip(steps, steps[1:]))


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages created under the mode and still alive (freed ones are
    subtracted when their storage is collected)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                key = storage_key(tensor)
                if key in inputs:  # a view (or in-place result) of an input: nothing allocated
                    continue
                storage = tensor.untyped_storage()
                if key and key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


class MeasuredMemory:
    """Wraps a tracker: its measurement runs under `PeakLiveBytes`; keeps the largest peak over the steps."""

    def __init__(self, tracker: GEffectTracker):
        self.tracker, self.retain_graph, self.peak = tracker, tracker.retain_graph, 0

    def on_train_begin(self, run):
        self.tracker.on_train_begin(run)

    def on_train_end(self, run):
        self.tracker.on_train_end(run)

    def after_backward(self, run, step):
        counter = PeakLiveBytes()
        with counter:
            self.tracker.after_backward(run, step)
        self.peak = max(self.peak, counter.peak)


class PaperScheme:
    """The paper's G-effect code, in-run: three extra forward+backward passes, host copies, host EMA."""

    retain_graph = False

    def __init__(self):
        self.ema: dict[str, dict[str, torch.Tensor]] = {"obj": {}, "u": {}, "r": {}}

    def on_train_begin(self, run):
        pass

    def on_train_end(self, run):
        pass

    def _pass(self, model, loss: torch.Tensor, key: str) -> None:
        saved = {n: p.grad for n, p in model.named_parameters()}  # keep the step's own gradient aside
        for p in model.parameters():
            p.grad = None
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            host = p.grad.reshape(-1).cpu()
            old = self.ema[key].get(name)
            self.ema[key][name] = host if old is None else 0.6 * old + 0.4 * host
        for name, p in model.named_parameters():
            p.grad = saved[name]

    def after_backward(self, run, step):
        model, batch = run.model, step.batch
        self._pass(model, score(model, batch.forget).risk(), "u")
        self._pass(model, run.objective(model, batch, run.ref_model).loss, "obj")
        retain = batch.retain if batch.retain is not None else batch.forget
        self._pass(model, score(model, retain).risk(), "r")
        for side in ("u", "r"):
            sum(float((self.ema["obj"][n] * g).sum()) for n, g in self.ema[side].items() if n in self.ema["obj"])


def _time_run(cfg: UnlearnConfig, extra: list, skip: int) -> tuple[float, int]:
    clock = StepClock(skip)
    if torch.cuda.is_available() and cfg.mixed_precision != "cpu":
        torch.cuda.reset_peak_memory_stats()
    unlearn(cfg, callbacks=[clock, *extra])
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return clock.seconds_per_step(), peak


def _cpu_peak(cfg: UnlearnConfig, tracker_config: TrackerConfig, steps: int = 4) -> int:
    """The largest number of bytes one step's measurement holds at once, from a short counted run."""
    short = dataclasses.replace(cfg, max_steps=steps, out=cfg.out + "-memory")
    measured = MeasuredMemory(GEffectTracker(tracker_config))
    unlearn(short, callbacks=[measured])
    return measured.peak


def _model_and_data(args, work: Path) -> tuple[str, str, str, torch.nn.Module]:
    """(model, data, template, the model loaded): the tiny preset on the built-in benchmark, or --model."""
    if args.model:
        from geffect.data.templates import template_for_model
        from geffect.models.loading import load_model, resolve_model_source

        args.forget = args.forget or "forget01"
        data = args.data or "../shared/data/tofu"
        return args.model, data, template_for_model(args.model).name, load_model(resolve_model_source(args.model))
    data, model_dir = work / "bench", work / "model"
    write_benchmark(data, n_authors=args.authors, seed=0)
    model, tokenizer = build_tiny(str(data), seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir), str(data), "plain", model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--authors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="repetitions; the fastest of each variant counts")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-scheme column")
    parser.add_argument("--model", help="a real model instead of the tiny preset (name, folder, .gguf, hub id)")
    parser.add_argument("--data", help="TOFU folder for --model (default: the built-in benchmark)")
    parser.add_argument("--forget", default=None, help="forget split (default forget01 with --model)")
    parser.add_argument("--max-length", type=int, default=512, help="max tokens per item")
    args = parser.parse_args(argv)

    scratch = tempfile.TemporaryDirectory(prefix="bench_geffect_")  # removed when the script ends
    work = Path(scratch.name)
    model_dir, data, template, model = _model_and_data(args, work)
    grad_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    print(
        f"{args.model or 'tiny preset'} model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"torch threads {torch.get_num_threads()}; batch {args.batch_size}, grad_accum 1; "
        f"{args.steps} steps ({args.skip} warm-up), median step, best of {args.rounds} rounds"
    )
    header = f"{'method':<10}{'untracked s/step':>18}{'tracked':>9}{'+instances':>12}{'+scatter':>10}{'paper':>8}{'limit':>7}"
    header += f"{'extra mem / grad':>18}{'(+instances)':>14}"
    print(header)
    failures = 0
    for method in args.methods:
        cfg = UnlearnConfig(
            model=str(model_dir),
            data=str(data),
            out=str(work / "runs" / method.replace("+", "_")),
            method=method,
            lr=1e-4,
            epochs=1000,
            max_steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=1,
            template=template,
            max_length=args.max_length,
            progress=False,
            overwrite=True,
            **({"forget": args.forget} if args.forget else {}),
        )
        variants = {
            "base": lambda: [],
            "tracked": lambda: [GEffectTracker(TrackerConfig(probe_batch_size=args.batch_size))],
            "instances": lambda: [GEffectTracker(TrackerConfig(instances=True, probe_batch_size=args.batch_size))],
            "scatter": lambda: [
                GEffectTracker(TrackerConfig(instances=True, scatter=True, probe_batch_size=args.batch_size))
            ],
        }
        if not args.no_paper:
            variants["paper"] = lambda: [PaperScheme()]
        best = {k: float("inf") for k in variants}
        peaks = {k: 0 for k in variants}
        for _ in range(args.rounds):
            for name, make in variants.items():  # interleaved, so machine load hits all variants alike
                seconds, peak = _time_run(cfg, make(), args.skip)
                best[name] = min(best[name], seconds)
                peaks[name] = max(peaks[name], peak)
        base = best["base"]
        ratio = {k: v / base for k, v in best.items()}
        limit = LIMITS.get(method, DEFAULT_LIMIT)
        memory = (
            {k: peaks[k] - peaks["base"] for k in ("tracked", "instances")}
            if torch.cuda.is_available()
            else {
                k: _cpu_peak(cfg, TrackerConfig(instances=k == "instances", probe_batch_size=args.batch_size))
                for k in ("tracked", "instances")
            }
        )
        ok = (
            ratio["tracked"] <= limit
            and ratio["instances"] - ratio["tracked"] <= 0.5
            and memory["tracked"] <= grad_bytes
        )
        failures += not ok
        paper = f"{ratio['paper']:>8.2f}" if "paper" in ratio else f"{'-':>8}"
        line = f"{method:<10}{base:>18.4f}{ratio['tracked']:>9.2f}{ratio['instances']:>12.2f}{ratio['scatter']:>10.2f}{paper}{limit:>7.1f}"
        line += f"{memory['tracked'] / grad_bytes:>18.2f}{memory['instances'] / grad_bytes:>14.2f}"
        print(line + ("" if ok else "   <- misses the target"))
    print("all targets met" if failures == 0 else f"{failures} method(s) miss the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
