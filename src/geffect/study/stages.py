"""What each stage of a study does, one function each; the pipeline decides when and caches the results.

Every function writes its outputs into the folder it is given and returns nothing the pipeline needs:
the reports read everything back from disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from geffect.io import atomic_write_json
from geffect.study.config import EvalSection, FinetuneSection, GEffectSection

EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"


def build_benchmark(folder: Path, authors: int, seed: int) -> None:
    from geffect.data.synth import write_benchmark

    write_benchmark(folder, n_authors=authors, seed=seed, overwrite=True)


def in_worker(work: Callable[..., None], args: tuple, threads: int) -> float:
    """Run `work(*args)` in a worker process of a side-by-side stage with `threads` torch threads and its
    stderr (progress bars, warnings) silenced: several processes would interleave their bars, and the study
    prints one line per finished stage. Errors still reach the study, as the exception `work` raised.
    Returns the seconds `work` took."""
    import sys
    import time

    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        sys.stderr = quiet
        work(*args)
    return time.perf_counter() - started


def finetune_model(base: str, data: str, split: str, folder: Path, options: FinetuneSection, template: str) -> None:
    from geffect.finetune import TINY_MODEL, finetune

    finetune(
        data=data,
        split=split,
        model=base,
        out=folder,
        epochs=options.epochs,
        lr=options.lr,
        batch_size=options.batch_size,
        seed=options.seed,
        max_steps=options.max_steps,
        template=template,
        overwrite=True,
        eval_limit=options.eval_limit,
        warmup_ratio=options.warmup_ratio,
        weight_decay=options.weight_decay,
        max_length=options.max_length,
        model_overrides=(options.tiny_overrides or None) if base == TINY_MODEL else None,
        precision=options.precision,
    )


def evaluate_model(
    model_path: str,
    data: str,
    forget_split: str,
    template: str,
    reference: str | None,
    options: EvalSection,
    folder: Path,
    dtype: str | None = None,
) -> None:
    """TOFU_EVAL.json of the model, then TOFU_SUMMARY.json against `reference` (None: the model's own
    evaluation, which makes the retain row's forget quality 1 by definition). The summary is written last."""
    from geffect.evaluation import evaluate, summarize
    from geffect.evaluation.logs import load_eval_file
    from geffect.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, dtype=dtype)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    results = evaluate(
        model, tokenizer, data, forget_split, template, retain_logs=reference,
        ds_size=options.ds_size, batch_size=options.batch_size, max_new_tokens=options.max_new_tokens,
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


def geffect_callbacks(options: GEffectSection) -> list:
    """The G-effect tracker the unlearning loop calls each step (empty when tracking is off)."""
    if not options.enabled:
        return []
    from geffect.effects.tracker import GEffectTracker, TrackerConfig

    settings = {"every": options.every, "estimator": options.estimator, "instances": options.instances or options.scatter,
                "scatter": options.scatter}
    if options.probe_size is not None:
        settings["probe_size"] = options.probe_size
    return [GEffectTracker(TrackerConfig(**settings))]


def unlearn_run(unlearn_config, options: GEffectSection) -> None:
    """One unlearning run; continues from its last checkpoint when an earlier attempt left one."""
    from geffect.training.unlearn import unlearn
    from geffect.training.checkpoint import latest_checkpoint

    folder = Path(unlearn_config.out)
    resumable = folder.is_dir() and latest_checkpoint(folder) is not None
    if folder.exists() and not resumable:
        shutil.rmtree(folder)
    unlearn_config.resume = resumable
    unlearn(unlearn_config, callbacks=geffect_callbacks(options))


def plot_run(folder: Path) -> None:
    from geffect.reports.geffect_plots import plot_run as draw

    draw(folder)
