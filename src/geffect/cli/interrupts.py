"""SIGTERM and Ctrl-C: the command stops through the normal error path (run folders are unlocked, staging
folders removed, half-written files never renamed into place) and prints one line saying how to continue:

    geffect: interrupted (SIGTERM); continue with: geffect unlearn --model ... --out runs/npo --resume

Exit status 143 after SIGTERM and 130 after Ctrl-C, as a shell reports a process killed by either.
"""

from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException, like KeyboardInterrupt: nothing catches it by accident)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated in the main thread (outside it, or in another thread: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_line(argv: Sequence[str], signal_name: str) -> str:
    """The one line printed when the command `argv` (without the program name) is interrupted."""
    argv = list(argv)
    command = argv[0] if argv else ""
    if command == "unlearn" and "--overwrite" not in argv:
        resume = argv if "--resume" in argv else [*argv, "--resume"]
        how = f"continue with: geffect {shlex.join(resume)}"
        return f"geffect: interrupted ({signal_name}); {how} (from its last checkpoint, see --save-every)"
    if command == "unlearn":
        how = "--out keeps its previous results; rerun the command to start the run again"
    elif command in ("study", "demo"):
        how = "rerun the same command to continue: finished stages are reused"
    else:
        how = "nothing was put in place of --out; rerun the command"
    return f"geffect: interrupted ({signal_name}); {how}"
