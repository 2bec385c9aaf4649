"""`run_study`: the stages of a study in order, with progress lines, timings and caching.

A stage is done when its marker `OUT/stages/<stage>.json` exists; the marker is written atomically after the
stage's outputs, and holds a fingerprint of everything the stage depends on (its options and the
fingerprints of the stages it reads from). A rerun skips every stage whose marker matches, and redoes a
stage (and, through the fingerprints, everything downstream of it) whose inputs changed. An unlearning run
interrupted after a checkpoint continues from it.

Under `accelerate launch` every process runs this function: the unlearning runs use all processes, the
other stages run on the main process while the others wait for the stage's marker file (a file wait rather
than a collective barrier, so that hours of fine-tuning on one GPU cannot time out the process group).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from geffect.errors import UsageError
from geffect.io import atomic_write_json, atomic_write_text
from geffect.study import stages
from geffect.study.config import StudyConfig
from geffect.study.plan import EVALS_DIR, StudyPlan, describe, plan_study, unlearn_config

STAGES_DIR = "stages"
CONFIG_FILE = "study.yaml"
MANIFEST_FILE = "manifest.json"
TIMINGS_FILE = "timings.json"
WAIT_POLL_SECONDS = 2.0


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Processes:
    """This process's place under `accelerate launch` / torchrun (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "Processes":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class StageRecord:
    stage: str
    name: str
    seconds: float
    cached: bool


@dataclass
class StudyResult:
    out: Path
    plan: StudyPlan
    stages: list[StageRecord] = field(default_factory=list)
    index: Path | None = None


class StageRunner:
    """Runs stages once, prints one progress line per stage with its time, and records the timings."""

    def __init__(self, out: Path, total: int, processes: Processes, stream=None):
        self.out = out
        self.total = total
        self.processes = processes
        self.stream = stream or sys.stderr
        self.done = 0
        self.records: list[StageRecord] = []

    def say(self, text: str) -> None:
        if self.processes.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)

    def run(self, stage: str, name: str, key: dict, work: Callable[[], None], outputs: tuple[Path, ...] = (), everywhere: bool = False) -> str:
        """Run `work` unless the stage's marker matches `key`; returns the stage's fingerprint."""
        self.done += 1
        marker = self.out / STAGES_DIR / f"{stage}-{name}.json"
        key_hash = fingerprint(key)
        prefix = f"[{self.done}/{self.total}] {stage} {name}"
        if self._finished(marker, key_hash, outputs):
            self.say(f"{prefix}: cached")
            self.records.append(StageRecord(stage, name, self._seconds(marker), True))
            return key_hash
        self.say(f"{prefix}: running ...")
        started = time.perf_counter()
        if everywhere or self.processes.is_main:
            if self.processes.is_main and marker.exists():
                marker.unlink()  # outdated: its inputs changed
            work()
        seconds = time.perf_counter() - started
        if self.processes.is_main:
            atomic_write_json(marker, {"key": key_hash, "inputs": key, "seconds": seconds, "finished": time.time()})
        else:
            self._wait_for(marker, key_hash)
        self.say(f"{prefix}: done in {seconds:.1f} s")
        self.records.append(StageRecord(stage, name, seconds, False))
        return key_hash

    @staticmethod
    def _finished(marker: Path, key_hash: str, outputs: tuple[Path, ...]) -> bool:
        if not marker.exists() or not all(p.exists() for p in outputs):
            return False
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("key") == key_hash
        except (OSError, json.JSONDecodeError):
            return False

    @staticmethod
    def _seconds(marker: Path) -> float:
        return float(json.loads(marker.read_text(encoding="utf-8")).get("seconds", 0.0))

    def run_side_by_side(self, stage: str, jobs: list[tuple[str, dict, Callable, tuple, tuple[Path, ...]]]) -> list[str]:
        """Like `run` for several independent stages, `(name, key, work, args, outputs)` each: the unfinished
        ones run in worker processes, one per core, `work(*args)` each with an equal share of the cores'
        threads. Returns the fingerprints in the order of `jobs`."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        hashes, pending = [], []
        for name, key, work, args, outputs in jobs:
            self.done += 1
            marker = self.out / STAGES_DIR / f"{stage}-{name}.json"
            hashes.append(fingerprint(key))
            prefix = f"[{self.done}/{self.total}] {stage} {name}"
            if self._finished(marker, hashes[-1], outputs):
                self.say(f"{prefix}: cached")
                self.records.append(StageRecord(stage, name, self._seconds(marker), True))
            else:
                if marker.exists():
                    marker.unlink()  # outdated: its inputs changed
                pending.append((prefix, name, key, hashes[-1], marker, work, args))
        if not pending:
            return hashes
        cores = os.cpu_count() or 1
        workers = min(len(pending), cores)
        threads = max(1, cores // workers)
        self.say(f"{stage}: {len(pending)} stage(s) side by side, {workers} processes with {threads} thread(s) each ...")
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(stages.in_worker, item[5], item[6], threads): item for item in pending}
            for future in as_completed(futures):
                prefix, name, key, key_hash, marker, _, _ = futures[future]
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()  # stop at the first failure, as one after the other would
                seconds = future.result()
                atomic_write_json(marker, {"key": key_hash, "inputs": key, "seconds": seconds, "finished": time.time()})
                self.say(f"{prefix}: done in {seconds:.1f} s")
                self.records.append(StageRecord(stage, name, seconds, False))
        self.say(f"{stage}: side-by-side stages done in {time.perf_counter() - started:.1f} s wall clock")
        return hashes

    def _wait_for(self, marker: Path, key_hash: str) -> None:
        while not self._finished(marker, key_hash, ()):
            time.sleep(WAIT_POLL_SECONDS)


def _count_stages(plan: StudyPlan) -> int:
    """benchmark (built-in only) + fine-tunes + references + target evaluations + 2 per run + report."""
    return int(plan.builtin) + len(plan.finetunes) + 2 * len(plan.references) + 2 * len(plan.runs) + 1


def _template(config: StudyConfig) -> str:
    """One template for every stage: the configured one, else the family of the target (or base) model.
    Fine-tuned copies live in folders whose names say nothing about the family, so it is fixed here."""
    from geffect.data.templates import template_for_model

    if config.template is not None:
        return config.template
    return template_for_model(config.model.target or config.model.base).name


def _manifest(plan: StudyPlan) -> dict:
    entries = []
    for ref in plan.references:
        entries.append({"name": "target", "kind": "target", "forget_split": ref.forget_split, "eval_dir": f"{EVALS_DIR}/target-{ref.forget_split}"})
        entries.append({"name": "retain", "kind": "retain", "forget_split": ref.forget_split, "eval_dir": ref.eval_dir})
    for run in plan.runs:
        entries.append({
            "name": run.run_id, "kind": "run", "method": run.label, "forget_split": run.forget_split, "seed": run.seed,
            "params": run.params, "run_dir": run.folder, "eval_dir": run.eval_dir,
        })
    return {"entries": entries}


def _prepare_out(out: Path, overwrite: bool, processes: Processes) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).exists() and not overwrite:
        raise UsageError(f"{out} exists and is not a study folder; choose another --out (or pass --overwrite to replace it)")
    if processes.is_main:
        if overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)


def run_study(config: StudyConfig, out: str | Path, dry_run: bool = False, overwrite: bool = False, stream=None) -> StudyResult:
    """Run (or, with `dry_run`, only plan and print) a study into `out`; see the module docstring."""
    out = Path(out).resolve()
    plan = plan_study(config)
    if dry_run:
        print("\n".join(describe(plan, str(out))), file=sys.stdout)
        return StudyResult(out, plan)
    processes = Processes.from_env()
    _prepare_out(out, overwrite, processes)
    if processes.is_main:
        atomic_write_text(out / CONFIG_FILE, config.to_yaml())
    study = _Study(config, plan, out, StageRunner(out, _count_stages(plan), processes, stream or sys.stderr))
    study.benchmark()
    study.models()
    study.references()
    study.target_evaluations()
    study.unlearning_runs()
    result = StudyResult(out, plan, study.runner.records)
    if processes.is_main:
        result.index = study.report()
    return result


class _Study:
    """The stages of one study in order; each records the fingerprint that the stages after it depend on."""

    def __init__(self, config: StudyConfig, plan: StudyPlan, out: Path, runner: StageRunner):
        self.config, self.plan, self.out, self.runner = config, plan, out, runner
        self.template = _template(config)
        self.data = str(out / plan.benchmark) if plan.builtin else plan.benchmark
        self.eval_options = asdict(config.eval)
        self.bench_key = fingerprint({"source": plan.benchmark})
        self.model_keys: dict[str, str] = {}
        self.model_paths: dict[str, str] = {}
        self.reference_keys: dict[str, str] = {}
        self.reference_files: dict[str, str] = {}

    def _evaluate(self, model: str, forget_split: str, reference: str | None, folder: Path) -> None:
        stages.evaluate_model(model, self.data, forget_split, self.template, reference, self.config.eval, folder, self.config.model.dtype)

    def benchmark(self) -> None:
        if not self.plan.builtin:
            return
        b = self.config.benchmark.builtin
        folder = self.out / self.plan.benchmark
        self.bench_key = self.runner.run(
            "benchmark", "builtin", {"authors": b.authors, "seed": b.seed},
            lambda: stages.build_benchmark(folder, b.authors, b.seed), (folder,),
        )

    def models(self) -> None:
        plan = self.plan
        options = self.config.model.finetune
        jobs = []
        for model in [plan.target] + [r.retain_model for r in plan.references if r.retain_model is not None]:
            ident = f"{model.role}-{model.split}"
            if model.how == "given":
                self.model_keys[ident] = fingerprint({"given": model.source})
                self.model_paths[ident] = model.source
                continue
            folder = self.out / model.folder
            key = {"bench": self.bench_key, "base": model.source, "split": model.split, "template": self.template,
                   "finetune": asdict(options)}
            args = (model.source, self.data, model.split, folder, options, self.template)
            jobs.append((ident, model.split, key, args, (folder / "config.json",)))
            self.model_paths[ident] = str(folder)
        hashes = self._run_all("finetune", [(split, key, stages.finetune_model, args, outputs) for _, split, key, args, outputs in jobs])
        self.model_keys.update({job[0]: h for job, h in zip(jobs, hashes)})

    def _run_all(self, stage: str, jobs: list[tuple[str, dict, Callable, tuple, tuple[Path, ...]]], everywhere: bool = False) -> list[str]:
        """Independent stages `(name, key, work, args, outputs)`: side by side when `side_by_side` allows,
        else one after the other."""
        if self.side_by_side(len(jobs)):
            return self.runner.run_side_by_side(stage, jobs)
        return [
            self.runner.run(stage, name, key, lambda w=work, a=args: w(*a), outputs, everywhere=everywhere)
            for name, key, work, args, outputs in jobs
        ]

    def side_by_side(self, count: int) -> bool:
        """Several independent stages on a CPU-only machine with more than one core, in one process (not
        under accelerate, whose processes already share the work)."""
        import torch

        return (
            self.config.side_by_side and count > 1 and (os.cpu_count() or 1) > 1
            and self.runner.processes.world_size == 1 and not torch.cuda.is_available()
        )

    def references(self) -> None:
        for ref in self.plan.references:
            folder = self.out / ref.eval_dir
            if ref.how == "log":
                key = {"log": ref.log_file, "mtime": os.path.getmtime(ref.log_file) if os.path.exists(ref.log_file) else None}
                work = lambda r=ref, f=folder: stages.summarize_log(r.log_file, f)  # noqa: E731
                self.reference_files[ref.forget_split] = ref.log_file
            else:
                ident = f"retain-{ref.retain_model.split}"
                key = {"bench": self.bench_key, "model": self.model_keys[ident], "eval": self.eval_options,
                       "template": self.template, "dtype": self.config.model.dtype}
                work = lambda r=ref, f=folder, p=self.model_paths[ident]: self._evaluate(p, r.forget_split, None, f)  # noqa: E731
                self.reference_files[ref.forget_split] = str(folder / stages.EVAL_FILE)
            self.reference_keys[ref.forget_split] = self.runner.run(
                "reference", ref.forget_split, key, work, (folder / stages.SUMMARY_FILE,)
            )

    @property
    def target(self) -> tuple[str, str]:
        ident = f"target-{self.plan.target.split}"
        return self.model_paths[ident], self.model_keys[ident]

    def target_evaluations(self) -> None:
        path, model_key = self.target
        for ref in self.plan.references:
            split = ref.forget_split
            folder = self.out / EVALS_DIR / f"target-{split}"
            key = {"bench": self.bench_key, "model": model_key, "reference": self.reference_keys[split],
                   "eval": self.eval_options, "template": self.template, "dtype": self.config.model.dtype}
            self.runner.run(
                "evaluate", f"target-{split}", key,
                lambda s=split, f=folder: self._evaluate(path, s, self.reference_files[s], f),
                (folder / stages.SUMMARY_FILE,),
            )

    def unlearning_runs(self) -> None:
        if self.runner.processes.is_main:
            atomic_write_json(self.out / MANIFEST_FILE, _manifest(self.plan))
        path, model_key = self.target
        unlearn_jobs = []
        for run in self.plan.runs:
            folder = self.out / run.folder
            key = {"bench": self.bench_key, "model": model_key, "run": asdict(run), "geffect": asdict(self.config.geffect),
                   "template": self.template, "dtype": self.config.model.dtype}
            options = unlearn_config(self.config, run, model=path, data=self.data, out=str(folder))
            options.template = self.template
            unlearn_jobs.append((run.run_id, key, stages.unlearn_run, (options, self.config.geffect), (folder / "summary.json",)))
        run_keys = self._run_all("unlearn", unlearn_jobs, everywhere=True)
        eval_jobs = []
        for run, run_key in zip(self.plan.runs, run_keys):
            eval_folder = self.out / run.eval_dir
            key = {"run": run_key, "reference": self.reference_keys[run.forget_split], "eval": self.eval_options}
            args = (str(self.out / run.folder / "model"), self.data, run.forget_split, self.template,
                    self.reference_files[run.forget_split], self.config.eval, eval_folder, self.config.model.dtype)
            eval_jobs.append((run.run_id, key, stages.evaluate_model, args, (eval_folder / stages.SUMMARY_FILE,)))
        self._run_all("evaluate", eval_jobs)

    def report(self) -> Path:
        """Tables, figures and index.html from the files above (always redone: cheap, and never stale)."""
        from geffect.reports.build import write_report

        runner = self.runner
        runner.done += 1
        prefix = f"[{runner.done}/{runner.total}] report"
        runner.say(f"{prefix}: running ...")
        started = time.perf_counter()
        atomic_write_json(self.out / TIMINGS_FILE, {"stages": [asdict(r) for r in runner.records]})
        index = write_report(self.out, title=f"geffect study: {self.config.name}")["index"]
        seconds = time.perf_counter() - started
        runner.records.append(StageRecord("report", "index.html", seconds, False))
        atomic_write_json(self.out / TIMINGS_FILE, {"stages": [asdict(r) for r in runner.records]})
        runner.say(f"{prefix}: done in {seconds:.1f} s -> {index}")
        return index


