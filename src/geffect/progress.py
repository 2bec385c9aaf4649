"""Progress of long loops: a tqdm bar on a terminal, plain lines elsewhere.

tqdm hides its bars when stderr is not a terminal (`disable=None`), so a job logging to a file printed nothing
for many minutes. Here a non-terminal gets a line each time `every_s` seconds have passed since the last one
(so a loop shorter than that says nothing), and the closing line of a loop that said something; each line has
the count, the elapsed time and an estimate of what is left.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T],
    desc: str,
    total: int | None = None,
    enabled: bool | None = None,
    every_s: float = 30.0,
    stream: TextIO | None = None,
) -> Iterable[T]:
    """`items`, reporting progress: `enabled` None shows it (a bar on a terminal, lines otherwise), False
    hides it, True shows it too."""
    if enabled is False:
        return items
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, total=total, leave=False, file=stream)
    return _lines(items, desc, total, every_s, stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _lines(items: Iterable[T], desc: str, total: int | None, every_s: float, stream: TextIO) -> Iterator[T]:
    started = last = time.monotonic()
    said = False
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or (said and done == total):
            print(f"{desc}: {_status(done, total, now - started)}", file=stream, flush=True)
            last, said = now, True


def _status(done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{done} done, {elapsed:.0f} s"
    left = elapsed / done * (total - done)
    return f"{done}/{total} ({100 * done / total:.0f}%), {elapsed:.0f} s, about {left:.0f} s left"
