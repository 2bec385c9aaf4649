"""What each stage of a study does, one function each, and `Stage`, one unit of the pipeline's work.

Every function writes its outputs into the folder it is given and returns nothing the pipeline needs:
the reports read everything back from disk. They are plain module-level functions of plain arguments, so a
stage can run in a worker process.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from geffect.evaluation.config import EvalConfig
from geffect.evaluation.logs import EVAL_FILE, SUMMARY_FILE
from geffect.io import atomic_write_json
from geffect.study.along import EvalPoints, PointsJob
from geffect.study.config import Tracking


@dataclass(frozen=True)
class Stage:
    """One unit of a study's work: `work(*args)` writes `outputs`; `key` (everything it depends on) is
    fingerprinted into its marker `stages/<kind>-<name>.json`. `everywhere`: every process runs it (the
    unlearning runs under accelerate), else the main process does and the others wait for its marker."""

    kind: str  # benchmark | finetune | reference | evaluate | unlearn
    name: str
    key: dict
    work: Callable[..., None]
    args: tuple = ()
    outputs: tuple[Path, ...] = ()
    everywhere: bool = False

    @property
    def marker(self) -> str:
        return f"{self.kind}-{self.name}.json"

    def run(self) -> None:
        self.work(*self.args)


def build_benchmark(folder: Path, authors: int, seed: int) -> None:
    from geffect.data.synth import write_benchmark

    write_benchmark(folder, n_authors=authors, seed=seed, overwrite=True)


def slice_benchmark(folder: Path, source: str, forget: str, retain_authors: int) -> None:
    from geffect.data.tofu import write_slice

    write_slice(source, forget, retain_authors, folder)


def in_worker(stage: Stage, threads: int) -> float:
    """Run `stage` in a worker process of a side-by-side stage with `threads` torch threads and its stderr
    (progress bars, warnings) silenced: several processes would interleave their bars, and the study prints
    one line per finished stage. Errors still reach the study, as the exception the stage raised. Returns
    the seconds it took."""
    import sys
    import time

    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        sys.stderr = quiet
        stage.run()
    return time.perf_counter() - started


def finetune_model(base: str, data: str, split: str, folder: Path, options: dict[str, Any], template: str) -> None:
    """`base` fine-tuned on `split` into `folder`, with the study's `model.finetune` options."""
    from geffect.training.finetune import TINY_MODEL, FinetuneConfig, finetune

    if base != TINY_MODEL:  # architecture overrides only shape the tiny model
        options = {k: v for k, v in options.items() if k != "model_overrides"}
    finetune(
        FinetuneConfig(
            data=data, split=split, model=base, out=str(folder), template=template, overwrite=True, **options
        )
    )


def evaluate_model(
    model_path: str,
    data: str,
    forget_split: str,
    template: str,
    reference: str | None,
    options: EvalConfig,
    folder: Path,
    dtype: str | None = None,
) -> None:
    """TOFU_EVAL.json of the model, then TOFU_SUMMARY.json against `reference` (None: the model's own
    evaluation, which makes the retain row's forget quality 1 by definition). The summary is written last."""
    from geffect.evaluation import evaluate, summarize
    from geffect.evaluation.extra import extra_metric_options
    from geffect.evaluation.logs import load_eval_file
    from geffect.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, dtype=dtype)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    results = evaluate(
        model,
        tokenizer,
        data,
        forget_split,
        template,
        retain_logs=reference,
        ds_size=options.ds_size,
        batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens,
        **extra_metric_options(options, dtype, next(model.parameters()).device),
    )
    atomic_write_json(folder / EVAL_FILE, results)
    reference_log = load_eval_file(reference) if reference is not None else load_eval_file(folder / EVAL_FILE)
    atomic_write_json(folder / SUMMARY_FILE, summarize(load_eval_file(folder / EVAL_FILE), reference_log))


def summarize_log(log_file: str, folder: Path) -> None:
    """The retain row from a given reference log (any supported format), scored against itself."""
    from geffect.evaluation import summarize
    from geffect.evaluation.logs import load_eval_file

    log = load_eval_file(log_file)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / SUMMARY_FILE, summarize(log, log))


def geffect_callbacks(tracking: Tracking) -> list:
    """The G-effect tracker the unlearning loop calls each step (empty when tracking is off)."""
    if not tracking.enabled:
        return []
    from geffect.effects.tracker import GEffectTracker

    return [GEffectTracker(tracking.tracker)]


def unlearn_run(unlearn_config, tracking: Tracking, points: PointsJob | None = None) -> None:
    """One unlearning run (scored along the way when `points` is given, `geffect.study.along`); continues
    from its last checkpoint when an earlier attempt left one."""
    from geffect.training.checkpoint import latest_checkpoint
    from geffect.training.unlearn import unlearn

    folder = Path(unlearn_config.out)
    resumable = folder.is_dir() and latest_checkpoint(folder) is not None
    if folder.exists() and not resumable:
        shutil.rmtree(folder)
    unlearn_config.resume = resumable
    callbacks = geffect_callbacks(tracking) + ([EvalPoints(points)] if points is not None else [])
    unlearn(unlearn_config, callbacks=callbacks)
