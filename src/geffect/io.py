"""Atomic result files and output folders that are never overwritten silently."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from geffect.errors import UsageError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it, so a killed run keeps every finished line."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def check_output_place(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse (UsageError) an output folder whose replacement would delete what the user had: empty (the
    current folder), the current folder or one of its parents (the filesystem root included), or a folder
    holding one of the command's `inputs` (local paths; hub ids and missing paths are checked elsewhere)."""
    if not str(path).strip():
        raise UsageError("--out is empty; name a new folder for the results, e.g. --out runs/my-run")
    target = Path(path).expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UsageError(
            f"--out {path} is the current folder or one of its parents; name a new folder, e.g. --out runs/my-run"
        )
    for item in inputs:
        if item is None or not str(item).strip() or not Path(item).expanduser().exists():
            continue
        source = Path(item).expanduser().resolve()
        if source == target or target in source.parents:
            raise UsageError(f"--out {path} holds the input {item}; choose an output folder outside it")


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()) -> bool:
    """Refuse (UsageError) an unsafe place (`check_output_place`), a path that is not a folder, and a non-empty
    folder unless `overwrite`; touches nothing. Returns whether a non-empty folder is there (the caller
    replaces or keeps it)."""
    check_output_place(path, inputs)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {path} exists and is not a folder; choose another --out")
    occupied = path.exists() and any(path.iterdir())
    if occupied and not overwrite:
        raise UsageError(f"output folder {path} already exists; pass --overwrite to replace it or choose another --out")
    return occupied


def prepare_output_dir(
    path: str | os.PathLike, overwrite: bool, resume: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Create an output folder; an existing non-empty one is refused unless `overwrite` (wiped) or `resume` (kept),
    and so is an unsafe place (`check_output_place`)."""
    occupied = check_output_dir(path, overwrite or resume, inputs)  # the path as given: "" is refused as empty
    path = Path(path)
    if occupied and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
