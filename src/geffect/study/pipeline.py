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

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geffect.data.tofu import SLICE_FILE
from geffect.errors import UsageError
from geffect.evaluation.logs import EVAL_FILE, SUMMARY_FILE
from geffect.io import (
    atomic_write_json,
    atomic_write_text,
    check_output_place,
    check_writable,
    drop_set_aside,
    set_aside,
)
from geffect.runfolder import RunFolder
from geffect.study import stages
from geffect.study.along import PointsJob
from geffect.study.config import TINY, StudyConfig
from geffect.study.plan import EVALS_DIR, How, StudyPlan, describe, plan_study, points_dir, unlearn_config
from geffect.study.relearn import relearn_stages
from geffect.study.stages import Stage
from geffect.studyfolder import StudyFolder

SLICE_DIR = "benchmark-slice"  # study-relative folder of a sliced TOFU source (benchmark.retain_authors)
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
    side_by_side: bool = False  # ran in a worker beside others (its seconds overlap theirs)


@dataclass
class StudyResult:
    out: Path
    plan: StudyPlan
    stages: list[StageRecord] = field(default_factory=list)
    index: Path | None = None


class StageRunner:
    """Runs stages once (one marker check for all of them), prints one progress line per stage with its
    time, and records the timings."""

    def __init__(self, out: Path, total: int, processes: Processes, stream=None):
        self.out = out
        self.total = total
        self.processes = processes
        self.stream = stream or sys.stderr
        self.done = 0
        self.records: list[StageRecord] = []
        # wall clock of each group of side-by-side stages (their stage times add up to more than it)
        self.side_by_side: list[dict] = []

    def say(self, text: str) -> None:
        if self.processes.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)

    def run(self, stages: list[Stage], side_by_side: bool = False) -> list[str]:
        """Run every stage whose marker does not match its key: one after the other, or with `side_by_side`
        in worker processes, one per core, each with an equal share of the cores' threads. Returns the
        stages' fingerprints in order."""
        pending = [stage for stage in stages if not self._cached(stage)]
        if side_by_side and pending:
            self._side_by_side(stages[0].kind, pending)
        else:
            for stage in pending:
                self._one(stage)
        return [fingerprint(stage.key) for stage in stages]

    def _prefix(self, stage: Stage) -> str:
        self.done += 1
        return f"[{self.done}/{self.total}] {stage.kind} {stage.name}"

    def _cached(self, stage: Stage) -> bool:
        """Whether the stage's marker matches its key and its outputs exist; an outdated marker is removed
        (its inputs changed). Counts and reports cached stages; the others are reported when they run."""
        marker = self.out / StudyFolder.STAGES / stage.marker
        if _finished(marker, fingerprint(stage.key), stage.outputs):
            self.say(f"{self._prefix(stage)}: cached")
            self.records.append(StageRecord(stage.kind, stage.name, _seconds(marker), True))
            return True
        if self.processes.is_main and marker.exists():
            marker.unlink()
        return False

    def _one(self, stage: Stage) -> None:
        prefix = self._prefix(stage)
        self.say(f"{prefix}: running ...")
        started = time.perf_counter()
        if stage.everywhere or self.processes.is_main:
            stage.run()
        seconds = time.perf_counter() - started
        if self.processes.is_main:
            self._mark(stage, seconds)
        else:
            self._wait_for(stage)
        self.say(f"{prefix}: done in {seconds:.1f} s")
        self.records.append(StageRecord(stage.kind, stage.name, seconds, False))

    def _side_by_side(self, kind: str, pending: list[Stage]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        prefixes = {id(stage): self._prefix(stage) for stage in pending}
        cores = os.cpu_count() or 1
        workers = min(len(pending), cores)
        threads = max(1, cores // workers)
        self.say(f"{kind}: {len(pending)} stage(s) side by side, {workers} processes with {threads} thread(s) each ...")
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(stages.in_worker, stage, threads): stage for stage in pending}
            for future in as_completed(futures):
                stage = futures[future]
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()  # stop at the first failure, as one after the other would
                seconds = future.result()
                self._mark(stage, seconds)
                self.say(f"{prefixes[id(stage)]}: done in {seconds:.1f} s")
                self.records.append(StageRecord(stage.kind, stage.name, seconds, False, side_by_side=True))
        wall = time.perf_counter() - started
        self.side_by_side.append({"stage": kind, "stages": len(pending), "workers": workers, "seconds": wall})
        self.say(f"{kind}: side-by-side stages done in {wall:.1f} s wall clock")

    def write_timings(self) -> None:
        atomic_write_json(
            self.out / StudyFolder.TIMINGS,
            {"stages": [asdict(r) for r in self.records], "side_by_side": self.side_by_side},
        )

    def _mark(self, stage: Stage, seconds: float) -> None:
        atomic_write_json(
            self.out / StudyFolder.STAGES / stage.marker,
            {"key": fingerprint(stage.key), "inputs": stage.key, "seconds": seconds, "finished": time.time()},
        )

    def _wait_for(self, stage: Stage) -> None:
        while not _finished(self.out / StudyFolder.STAGES / stage.marker, fingerprint(stage.key), ()):
            time.sleep(WAIT_POLL_SECONDS)


def tiny_preset() -> dict:
    from geffect.models.tiny import TINY as preset  # imports torch: only for a study that fine-tunes `tiny`

    return asdict(preset)


def _finished(marker: Path, key_hash: str, outputs: tuple[Path, ...]) -> bool:
    if not marker.exists() or not all(p.exists() for p in outputs):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("key") == key_hash
    except (OSError, json.JSONDecodeError):
        return False


def _seconds(marker: Path) -> float:
    return float(json.loads(marker.read_text(encoding="utf-8")).get("seconds", 0.0))


def _count_stages(plan: StudyPlan) -> int:
    """benchmark (built-in only) + fine-tunes + references + target evaluations (twice each with points along
    the runs: the end-point sets and the points subset) + 2 per run + report."""
    per_reference = 4 if plan.config.eval.every else 2
    sliced = plan.config.benchmark.retain_authors is not None
    return (
        int(plan.builtin)
        + int(sliced)
        + len(plan.finetunes)
        + per_reference * len(plan.references)
        + 2 * len(plan.runs)
        + 1
        + _relearn_count(plan)
    )


def _relearn_count(plan: StudyPlan) -> int:
    relearn = plan.config.relearn
    return 0 if relearn is None else len(relearn.samples) * len(plan.runs)


def _template(config: StudyConfig) -> str:
    """One template for every stage: the configured one, else the family of the target (or base) model.
    Fine-tuned copies live in folders whose names say nothing about the family, so it is fixed here."""
    from geffect.data.templates import template_for_model

    if config.template is not None:
        return config.template
    return template_for_model(config.model.target or config.model.base).name


def _manifest(plan: StudyPlan) -> dict:
    entries = []
    along = plan.config.eval.every is not None
    for ref in plan.references:
        entries.append(
            {
                "name": "target",
                "kind": "target",
                "forget_split": ref.forget_split,
                "eval_dir": f"{EVALS_DIR}/target-{ref.forget_split}",
                **({"points_dir": points_dir(f"{EVALS_DIR}/target-{ref.forget_split}")} if along else {}),
            }
        )
        entries.append({"name": "retain", "kind": "retain", "forget_split": ref.forget_split, "eval_dir": ref.eval_dir})
    for run in plan.runs:
        entries.append(
            {
                "name": run.run_id,
                "kind": "run",
                "method": run.label,
                "forget_split": run.forget_split,
                "seed": run.seed,
                "params": run.params,
                "run_dir": run.folder,
                "eval_dir": run.eval_dir,
                **({"points_dir": points_dir(run.folder)} if along else {}),
            }
        )
    return {"entries": entries}


def _inputs(config: StudyConfig) -> tuple:
    """The data, models and logs a study reads (local paths among them must stay outside its folder)."""
    model = config.model
    return (config.benchmark.source, model.base, model.target, *model.retain.values(), *model.retain_logs.values())


def _prepare_out(out: Path, overwrite: bool, processes: Processes, inputs: tuple) -> None:
    check_output_place(out, inputs)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / StudyFolder.CONFIG).exists() and not overwrite:
        raise UsageError(
            f"{out} exists and is not a study folder; choose another --out (or pass --overwrite to replace it)"
        )
    check_writable(out)
    if processes.is_main:
        if overwrite and out.exists():
            set_aside(out)  # removed once the new study has finished (`run_study`)
        out.mkdir(parents=True, exist_ok=True)


def run_study(
    config: StudyConfig, out: str | Path, dry_run: bool = False, overwrite: bool = False, stream=None
) -> StudyResult:
    """Run (or, with `dry_run`, only plan and print) a study into `out`; see the module docstring."""
    out = Path(out).resolve()
    plan = plan_study(config)
    if dry_run:
        print("\n".join(describe(plan, str(out))), file=sys.stdout)
        return StudyResult(out, plan)
    processes = Processes.from_env()
    _prepare_out(out, overwrite, processes, _inputs(config))
    if processes.is_main:
        atomic_write_text(out / StudyFolder.CONFIG, config.to_yaml())
    study = _Study(config, plan, out, StageRunner(out, _count_stages(plan), processes, stream or sys.stderr))
    study.benchmark()
    study.models()
    study.references()
    study.target_evaluations()
    study.unlearning_runs()
    result = StudyResult(out, plan, study.runner.records)
    if processes.is_main:
        result.index = study.report()
        drop_set_aside(out)
    return result


class _Study:
    """The stages of one study in order; each records the fingerprint that the stages after it depend on."""

    def __init__(self, config: StudyConfig, plan: StudyPlan, out: Path, runner: StageRunner):
        self.config, self.plan, self.out, self.runner = config, plan, out, runner
        self.template = _template(config)
        self.data = str(out / plan.benchmark) if plan.builtin else plan.benchmark
        if config.benchmark.retain_authors is not None:  # a slice of the source, cut into the study folder
            self.data = str(out / SLICE_DIR)
        self.eval_options = config.eval.end_point()
        self.points_options = config.eval.points()
        self.bench_key = fingerprint({"source": plan.benchmark})
        self.model_keys: dict[str, str] = {}
        self.model_paths: dict[str, str] = {}
        self.reference_keys: dict[str, str] = {}
        self.reference_files: dict[str, str] = {}
        self.points_keys: dict[str, str] = {}  # per forget split: the subset reference's fingerprint
        self.points_files: dict[str, str] = {}  # per forget split: the subset reference's TOFU_EVAL.json

    def _evaluation(
        self, name: str, key: dict, model: str, forget_split: str, reference: str | None, folder: Path, options=None
    ) -> Stage:
        args = (
            model,
            self.data,
            forget_split,
            self.template,
            reference,
            options or self.config.eval,
            folder,
            self.config.model.dtype,
        )
        return Stage("evaluate", name, key, stages.evaluate_model, args, (folder / SUMMARY_FILE,))

    def benchmark(self) -> None:
        if self.config.benchmark.retain_authors is not None:
            self._slice()
        if not self.plan.builtin:
            return
        b = self.config.benchmark.builtin
        folder = self.out / self.plan.benchmark
        stage = Stage(
            "benchmark",
            "builtin",
            {"authors": b.authors, "seed": b.seed},
            stages.build_benchmark,
            (folder, b.authors, b.seed),
            (folder,),
        )
        (self.bench_key,) = self.runner.run([stage])

    def _slice(self) -> None:
        bench = self.config.benchmark
        folder = self.out / SLICE_DIR
        forget = self.config.forget_splits[0]
        key = {"source": bench.source, "forget": forget, "retain_authors": bench.retain_authors}
        args = (folder, bench.source, forget, bench.retain_authors)
        stage = Stage("benchmark", "slice", key, stages.slice_benchmark, args, (folder / SLICE_FILE,))
        (self.bench_key,) = self.runner.run([stage])

    def models(self) -> None:
        plan = self.plan
        options = self.config.model.finetune
        jobs: list[tuple[str, Stage]] = []
        for model in [plan.target] + [r.retain_model for r in plan.references if r.retain_model is not None]:
            ident = f"{model.role}-{model.split}"
            if model.how == How.GIVEN:
                self.model_keys[ident] = fingerprint({"given": model.source})
                self.model_paths[ident] = model.source
                continue
            folder = self.out / model.folder
            key = {
                "bench": self.bench_key,
                "base": model.source,
                "split": model.split,
                "template": self.template,
                "finetune": options,
                # the tiny preset's recipe fills in what `finetune` leaves out: a new recipe is a new model
                **({"tiny_preset": tiny_preset()} if model.source == TINY else {}),
            }
            args = (model.source, self.data, model.split, folder, options, self.template)
            jobs.append(
                (ident, Stage("finetune", model.split, key, stages.finetune_model, args, (folder / "config.json",)))
            )
            self.model_paths[ident] = str(folder)
        hashes = self._run_all([stage for _, stage in jobs])
        self.model_keys.update({ident: h for (ident, _), h in zip(jobs, hashes)})

    def _run_all(self, work: list[Stage]) -> list[str]:
        """Independent stages: side by side when `side_by_side` allows, else one after the other."""
        return self.runner.run(work, side_by_side=self.side_by_side(len(work)))

    def side_by_side(self, count: int) -> bool:
        """Several independent stages on a CPU-only machine with more than one core, in one process (not
        under accelerate, whose processes already share the work)."""
        import torch

        return (
            self.config.side_by_side
            and count > 1
            and (os.cpu_count() or 1) > 1
            and self.runner.processes.world_size == 1
            and not torch.cuda.is_available()
        )

    def references(self) -> None:
        for ref in self.plan.references:
            folder = self.out / ref.eval_dir
            if ref.how == How.LOG:
                key = {
                    "log": ref.log_file,
                    "mtime": os.path.getmtime(ref.log_file) if os.path.exists(ref.log_file) else None,
                }
                stage = Stage(
                    "reference",
                    ref.forget_split,
                    key,
                    stages.summarize_log,
                    (ref.log_file, folder),
                    (folder / SUMMARY_FILE,),
                )
                self.reference_files[ref.forget_split] = ref.log_file
            else:
                ident = f"retain-{ref.retain_model.split}"
                key = {
                    "bench": self.bench_key,
                    "model": self.model_keys[ident],
                    "eval": self.eval_options,
                    "template": self.template,
                    "dtype": self.config.model.dtype,
                }
                stage = self._evaluation(ref.forget_split, key, self.model_paths[ident], ref.forget_split, None, folder)
                stage = dataclasses.replace(stage, kind="reference")
                self.reference_files[ref.forget_split] = str(folder / EVAL_FILE)
            (self.reference_keys[ref.forget_split],) = self.runner.run([stage])
            if self.config.eval.every:
                self._points_reference(ref, key)

    def _points_reference(self, ref, key: dict) -> None:
        """The retain model scored on the points subset: the reference of every point along the runs."""
        split = ref.forget_split
        folder = self.out / points_dir(ref.eval_dir)
        key = {**key, "eval": asdict(self.points_options)}
        model = self.model_paths[f"retain-{ref.retain_model.split}"]
        stage = self._evaluation(f"{split}-points", key, model, split, None, folder, self.points_options)
        (self.points_keys[split],) = self.runner.run([dataclasses.replace(stage, kind="reference")])
        self.points_files[split] = str(folder / EVAL_FILE)

    @property
    def target(self) -> tuple[str, str]:
        ident = f"target-{self.plan.target.split}"
        return self.model_paths[ident], self.model_keys[ident]

    def target_evaluations(self) -> None:
        path, model_key = self.target
        for ref in self.plan.references:
            split = ref.forget_split
            folder = self.out / EVALS_DIR / f"target-{split}"
            key = {
                "bench": self.bench_key,
                "model": model_key,
                "reference": self.reference_keys[split],
                "eval": self.eval_options,
                "template": self.template,
                "dtype": self.config.model.dtype,
            }
            self.runner.run(
                [self._evaluation(f"target-{split}", key, path, split, self.reference_files[split], folder)]
            )
            if self.config.eval.every:  # the step-0 point of every run's path
                key = {**key, "reference": self.points_keys[split], "eval": asdict(self.points_options)}
                folder, reference = self.out / points_dir(f"{EVALS_DIR}/target-{split}"), self.points_files[split]
                stage = self._evaluation(
                    f"target-{split}-points", key, path, split, reference, folder, self.points_options
                )
                self.runner.run([stage])

    def points_job(self, run) -> PointsJob | None:
        """What a run's EvalPoints callback needs (None without `eval.every`)."""
        every = self.config.eval.every
        if not every:
            return None
        split = run.forget_split
        folder = str(self.out / points_dir(run.folder))
        return PointsJob(every, self.data, split, self.template, self.points_files[split], self.points_options, folder)

    def unlearning_runs(self) -> None:
        if self.runner.processes.is_main:
            atomic_write_json(self.out / StudyFolder.MANIFEST, _manifest(self.plan))
        path, model_key = self.target
        unlearn_stages = []
        for run in self.plan.runs:
            folder = self.out / run.folder
            key = {
                "bench": self.bench_key,
                "model": model_key,
                "run": asdict(run),
                "geffect": self.config.geffect.to_section(),
                "template": self.template,
                "dtype": self.config.model.dtype,
            }
            job = self.points_job(run)
            if job is not None:  # the points are part of what the run writes
                key["points"] = {
                    "every": job.every,
                    "eval": asdict(job.options),
                    "reference": self.points_keys[run.forget_split],
                }
            options = unlearn_config(self.config, run, model=path, data=self.data, out=str(folder))
            options.template = self.template
            unlearn_stages.append(
                Stage(
                    "unlearn",
                    run.run_id,
                    key,
                    stages.unlearn_run,
                    (options, self.config.geffect, job),
                    (RunFolder(folder).summary_path,),
                    everywhere=True,
                )
            )
        run_keys = self._run_all(unlearn_stages)
        evaluations = []
        for run, run_key in zip(self.plan.runs, run_keys):
            key = {"run": run_key, "reference": self.reference_keys[run.forget_split], "eval": self.eval_options}
            model = str(RunFolder(self.out / run.folder).model_dir)
            reference = self.reference_files[run.forget_split]
            evaluations.append(
                self._evaluation(run.run_id, key, model, run.forget_split, reference, self.out / run.eval_dir)
            )
        self._run_all(evaluations)
        self._run_all(relearn_stages(self, self.plan.runs, run_keys))  # the relearning attacks, if any

    def report(self) -> Path:
        """Tables, figures and index.html from the files above (always redone: cheap, and never stale)."""
        from geffect.reports.build import write_report

        runner = self.runner
        runner.done += 1
        prefix = f"[{runner.done}/{runner.total}] report"
        runner.say(f"{prefix}: running ...")
        started = time.perf_counter()
        runner.write_timings()
        index = write_report(self.out, title=f"geffect study: {self.config.name}")["index"]
        seconds = time.perf_counter() - started
        runner.records.append(StageRecord("report", StudyFolder.INDEX, seconds, False))
        runner.write_timings()
        runner.say(f"{prefix}: done in {seconds:.1f} s -> {index}")
        return index
