"""One run per folder: an advisory lock file, `FOLDER/.geffect.lock`, holding the owner's process id.

The lock is an `fcntl.flock` on that file, so the kernel drops it when the owner dies, whatever killed it
(SIGKILL included): a lock file left by a dead process is "stale" and the next run takes it over with a
warning. A second live run into the same folder gets a one-line UsageError naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from geffect.errors import UsageError

LOCK_NAME = ".geffect.lock"


class RunLock:
    """The held lock of one folder; `release()` (or leaving the `with` block) drops it and removes the file."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise UsageError naming the live process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UsageError(
                f"run folder {self.folder} is in use by process {holder or '(unknown)'} (lock {self.path}); "
                "wait for that run to end, or choose another --out"
            ) from None
        stale = _read(fd)
        if stale and stale != _owner():
            logging.getLogger(__name__).warning(
                "took over the stale lock %s of process %s, which is no longer running", self.path, stale
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner().encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (if it is still ours: a swapped-away folder took it along) and unlock."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _owner() -> str:
    return f"{os.getpid()} on {socket.gethostname()}"


def _read(fd: int) -> str:
    return os.pread(fd, 256, 0).decode(errors="replace").strip()


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a run lock (it does not make a folder "occupied")."""
    return path.name == LOCK_NAME
