"""The RunContext a test hands the G-effect tracker when it drives it from a minimal loop of its own."""

from __future__ import annotations

from types import SimpleNamespace

from geffect.runfolder import RunFolder
from geffect.training.callbacks import RunContext
from geffect.training.config import UnlearnConfig

ONE_PROCESS = SimpleNamespace(is_main_process=True, num_processes=1)


def tracker_run(tmp_path, model, objective, ref_model, steps: int, **options) -> RunContext:
    return RunContext(
        folder=RunFolder(tmp_path),
        model=model,
        accelerator=ONE_PROCESS,
        objective=objective,
        ref_model=ref_model,
        tokenizer=None,
        total_steps=steps,
        template=None,
        options=UnlearnConfig(model="tiny", data="unused", out=str(tmp_path), grad_accum=1, **options),
    )
