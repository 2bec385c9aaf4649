"""Atomic result files and output folders that are never overwritten silently."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from geffect.errors import UsageError
from geffect.runlock import is_lock_file


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


def read_jsonl(path: str | os.PathLike, torn_tail: bool = False) -> list[dict]:
    """The records of a JSON Lines file. A line that is not a JSON object is a UsageError naming the file and
    line, except, with `torn_tail`, the last one: a process killed while appending leaves half a line, which
    is dropped with a warning (the step it belonged to is redone or was lost with the process)."""
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            record, problem = None, str(err)
        else:
            problem = None if isinstance(record, dict) else "not a JSON object"
        if problem is None:
            records.append(record)
        elif torn_tail and position == len(lines) - 1:
            logging.getLogger(__name__).warning("%s: dropped its torn last line %d (%s)", path, number, problem)
        else:
            raise UsageError(f"{path} line {number} is not a JSON record ({problem}); the file is corrupt")
    return records


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
    """Refuse (UsageError) an unsafe place (`check_output_place`), a path that is not a folder, a place the
    user cannot write to, and a non-empty folder unless `overwrite`; touches nothing. Returns whether a
    non-empty folder is there (the caller replaces or keeps it)."""
    check_output_place(path, inputs)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {path} exists and is not a folder; choose another --out")
    check_writable(path)
    taken = occupied(path)
    if taken and not overwrite:
        raise UsageError(f"output folder {path} already exists; pass --overwrite to replace it or choose another --out")
    return taken


def occupied(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding anything but a run lock."""
    path = Path(path)
    return path.is_dir() and any(not is_lock_file(item) for item in path.iterdir())


def check_writable(path: str | os.PathLike) -> None:
    """UsageError unless files can be created in `path` (when it is a folder) and next to it (where its
    replacement is staged): a probe file is created and removed, so read-only mounts count too."""
    path = Path(path).expanduser().absolute()
    places = [path] if path.is_dir() else []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    places.append(parent)
    for place in places:
        try:
            fd, probe = tempfile.mkstemp(dir=place, prefix=".geffect-write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise UsageError(
                f"cannot write to --out {path}: {err.strerror or err} in {place}; choose a folder you can write to"
            ) from None


def staging_path(path: str | os.PathLike) -> Path:
    """The hidden sibling a replacement of `path` is written into (one name, so every process agrees)."""
    path = Path(path)
    return path.parent / f".{path.name}.incoming"


def swap_in(staging: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put the finished folder `staging` at `path`; an old folder there is removed only after the rename."""
    staging, path = Path(staging), Path(path)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextmanager
def staged_output_dir(
    path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Checks as `check_output_dir`, then yields an empty staging folder next to `path`; when the block ends
    without an error it replaces `path` (so --overwrite loses the old results only once the new ones exist),
    else it is removed and `path` is untouched."""
    check_output_dir(path, overwrite, inputs)
    staging = staging_path(path)
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, path)


def prepare_output_dir(
    path: str | os.PathLike, overwrite: bool, resume: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Create an output folder that is written in place; an existing non-empty one is refused unless `resume`
    (kept) or `overwrite` (wiped: prefer `staged_output_dir`, which keeps it until the new results exist), and
    so is an unsafe place (`check_output_place`)."""
    taken = check_output_dir(path, overwrite or resume, inputs)  # the path as given: "" is refused as empty
    path = Path(path)
    if taken and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def absolute_if_local(path: str | None) -> str | None:
    """A local path as an absolute one (what a run records, so it reads the same from any folder); a hub id
    (no such local file) and None unchanged."""
    if path is None or not str(path).strip():
        return path
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() or str(path).startswith((".", "/", "~")) else path


def yaml_load_unique(text: str) -> Any:
    """`yaml.safe_load`, except that a key given twice in one mapping is an error (yaml.YAMLError with the
    line of the second one) instead of the last value silently winning."""
    import yaml

    class _UniqueKeyLoader(yaml.SafeLoader):
        pass

    def _mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (give each key once)", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    _UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def set_aside_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.previous"


def set_aside(path: str | os.PathLike) -> Path:
    """Move a folder that --overwrite replaces next to itself (`.NAME.previous`) instead of deleting it, for a
    command that must write in place (a study: its files record their own paths). An older set-aside copy is
    kept (it holds the last finished results; `path` then holds a partial attempt, which is dropped)."""
    path, aside = Path(path), set_aside_path(path)
    if aside.exists():
        shutil.rmtree(path)
    else:
        os.replace(path, aside)
    return aside


def drop_set_aside(path: str | os.PathLike) -> None:
    """The new results at `path` are complete: remove what `set_aside` kept."""
    shutil.rmtree(set_aside_path(path), ignore_errors=True)
