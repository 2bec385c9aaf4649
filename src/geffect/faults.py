"""Fault injection for the interruption tests (tests/test_training_resume.py), off unless asked for.

`GEFFECT_FAULT=POINT[@STEP][:SIGNAL]` makes the process send itself SIGNAL (default SIGKILL) when it reaches
POINT (at optimizer step STEP, when given), which hits "during the final save" exactly, without sleeping:

- `checkpoint-write`: a checkpoint's files are written into its temporary folder, not yet renamed into place;
- `final-save`: RUN/model is written into its temporary folder, not yet renamed into place.
"""

from __future__ import annotations

import os
import signal

ENV = "GEFFECT_FAULT"


def fault_point(name: str, step: int | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, signal_name = spec.partition(":")
    point, _, at = where.partition("@")
    if point == name and (not at or (step is not None and int(at) == step)):
        os.kill(os.getpid(), getattr(signal, signal_name or "SIGKILL"))
