"""A study's `relearn:` section: the relearning attack (geffect.training.relearn) after each unlearning run.

    relearn: {samples: [10, 20], steps: 10, lr: 1e-4, batch_size: 4}

For every run and every N in `samples`, RUN/relearn-N/ holds the attacked model's TOFU_EVAL.json,
TOFU_SUMMARY.json (forget quality against the run's reference) and relearn.json; the report puts forget
quality, forget probability and ROUGE before and after the attack side by side (reports/relearn.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geffect.evaluation.logs import SUMMARY_FILE
from geffect.schema import build, fail

RELEARN_PREFIX = "relearn-"


@dataclass
class RelearnSection:
    samples: list[int] = field(default_factory=lambda: [20])
    steps: int = 10
    lr: float = 1e-5
    batch_size: int = 4

    @classmethod
    def from_section(cls, data: Any, path: str) -> "RelearnSection":
        section = build(cls, data, path)
        if not section.samples or any(isinstance(n, bool) or n < 1 for n in section.samples):
            raise fail(f"{path}.samples", f"give one or more item counts >= 1, got {section.samples!r}")
        if len(set(section.samples)) != len(section.samples):
            raise fail(f"{path}.samples", "values repeat")
        for key in ("steps", "batch_size"):
            if getattr(section, key) < 1:
                raise fail(f"{path}.{key}", f"must be >= 1, got {getattr(section, key)}")
        if not section.lr > 0:
            raise fail(f"{path}.lr", f"must be a positive number, got {section.lr}")
        return section


def relearn_folder(run_folder: str, samples: int) -> str:
    """Study-relative folder of a run's attack with `samples` items."""
    return f"{run_folder}/{RELEARN_PREFIX}{samples}"


def relearn_run(model: str, data: str, split: str, template: str, reference: str, section: dict, samples: int,
                seed: int, eval_options: dict, folder: Path) -> None:  # fmt: skip
    """One attack, written into `folder` (the pipeline's stage function)."""
    from geffect.evaluation.config import EvalConfig
    from geffect.training.relearn import RelearnConfig, relearn

    config = RelearnConfig(
        model=model, data=data, out=str(folder), forget=split, samples=samples, steps=section["steps"],
        lr=section["lr"], batch_size=section["batch_size"], seed=seed, template=template, retain_logs=reference,
        overwrite=True, progress=False,
    )  # fmt: skip
    relearn(config, EvalConfig(**eval_options))


def relearn_stages(study, runs, run_keys) -> list:
    """The attack stages of the study's runs (none without a `relearn:` section)."""
    from geffect.runfolder import RunFolder
    from geffect.study.stages import Stage

    section = study.config.relearn
    if section is None:
        return []
    out, stages = study.out, []
    for run, run_key in zip(runs, run_keys):
        model = str(RunFolder(out / run.folder).model_dir)
        reference = study.reference_files[run.forget_split]
        for n in section.samples:
            folder = out / relearn_folder(run.folder, n)
            key = {"run": run_key, "relearn": asdict(section), "samples": n, "eval": study.eval_options,
                   "reference": study.reference_keys[run.forget_split]}  # fmt: skip
            args = (model, study.data, run.forget_split, study.template, reference, asdict(section), n, run.seed,
                    study.eval_options, folder)  # fmt: skip
            stages.append(Stage("relearn", f"{run.run_id}-{n}", key, relearn_run, args, (folder / SUMMARY_FILE,)))
    return stages
