"""One unlearning run's folder: the only place that knows its file names and reads and writes its files.

RUN/config.yaml          options, resolved values and the settings callbacks recorded
RUN/log.jsonl            one line per optimizer step
RUN/geffect.jsonl        one G-effect record per measured step (docs/geffect-format.md)
RUN/geffect_layout.json  the parameter layout of those records
RUN/checkpoints/         step-NNNNNNNN folders (geffect.training.checkpoint)
RUN/model/               the final save_pretrained folder
RUN/summary.json         written last: its presence marks a finished run
RUN/figures/             `geffect plot`'s figures
RUN/.geffect.lock        held while a run writes the folder (geffect.runlock): one run per folder

A run given --overwrite for a folder that holds results writes into the hidden sibling `.RUN.incoming`
(`path`) and swaps it in when it has finished (`final`), so the old results go only once new ones exist.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from geffect.errors import UsageError
from geffect.io import absolute_if_local, append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, swap_in
from geffect.runlock import RunLock

# Options that name local paths: a run records them absolute, so it reads the same from any folder.
PATH_OPTIONS = ("model", "data", "out")


def recorded_options(options: dict) -> dict:
    """`options` as a run records and compares them: local paths absolute (hub ids unchanged)."""
    return {k: absolute_if_local(v) if k in PATH_OPTIONS else v for k, v in options.items()}


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


class RunFolder:
    CONFIG = "config.yaml"
    LOG = "log.jsonl"
    GEFFECT = "geffect.jsonl"
    LAYOUT = "geffect_layout.json"
    CHECKPOINTS = "checkpoints"
    MODEL = "model"
    SUMMARY = "summary.json"
    FIGURES = "figures"

    def __init__(self, path: str | Path, final: str | Path | None = None):
        self.path = Path(path)  # where the files are written now
        self.final = Path(final) if final is not None else self.path  # where they end up
        self.lock: RunLock | None = None  # held by the process that opened the folder for writing

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- opening and closing a folder being written ------------------------------------------------------
    @property
    def staged(self) -> bool:
        """Whether the files go to a staging sibling that replaces `final` at the end (--overwrite)."""
        return self.final != self.path

    def take_lock(self) -> None:
        """Lock `final` (creating it): a second run into it exits 2 naming this process."""
        self._created = not self.final.exists()
        self.final.mkdir(parents=True, exist_ok=True)
        try:
            self.lock = RunLock(self.final).acquire()
        except BaseException:
            self._remove_if_created()
            raise

    def swap_in(self) -> None:
        """Replace `final` by the finished staging folder (a no-op for a folder written in place)."""
        if self.staged:
            swap_in(self.path, self.final)
            self.path = self.final

    def close(self, failed: bool) -> None:
        """Release the lock; a failed staged run's folder is removed (`final` keeps the old results)."""
        import shutil

        if failed and self.staged and self.lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if failed:
                self._remove_if_created()

    def _remove_if_created(self) -> None:
        """A folder this run created and left empty (it failed before writing) goes again."""
        if getattr(self, "_created", False):
            try:
                self.final.rmdir()
            except OSError:
                pass  # not empty (or already gone): keep it

    # --- paths ---------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def geffect_path(self) -> Path:
        return self.path / self.GEFFECT

    @property
    def layout_path(self) -> Path:
        return self.path / self.LAYOUT

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def figures_dir(self) -> Path:
        return self.path / self.FIGURES

    # --- state ---------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.summary_path.exists()

    def is_run(self) -> bool:
        """Whether the folder holds something an unlearning run wrote (its log or its G-effect records)."""
        return self.log_path.exists() or self.geffect_path.exists()

    # --- config.yaml ---------------------------------------------------------------------------------------
    def read_config(self) -> dict:
        """The run's configuration document ({} when absent)."""
        import yaml

        if not self.config_path.exists():
            return {}
        try:
            document = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            problem = str(err).splitlines()[0]
            raise UsageError(f"{self.config_path} is corrupt ({problem}); restore it, or pass --overwrite") from None
        if not isinstance(document, dict) or not isinstance(document.get("options", {}), dict):
            raise UsageError(f"{self.config_path} is not a run configuration; restore it, or pass --overwrite")
        return document

    def write_config(self, document: dict) -> None:
        import yaml

        atomic_write_text(self.config_path, yaml.safe_dump(document, sort_keys=False))

    # --- log.jsonl -----------------------------------------------------------------------------------------
    def append_log(self, record: dict) -> None:
        append_jsonl(self.log_path, record)

    def read_log(self) -> list[dict]:
        """The log's records; a torn last line (a killed run) is dropped with a warning."""
        return read_jsonl(self.log_path, torn_tail=True) if self.log_path.exists() else []

    def keep_log_until(self, step: int) -> list[dict]:
        """A resumed run continues the log of its checkpoint: later lines (lost work) are dropped; a fresh
        run (`step` 0) starts an empty log. Returns the lines kept."""
        return _keep_until(self.log_path, step, ensure_ascii=False)

    # --- geffect.jsonl -------------------------------------------------------------------------------------
    def append_geffect(self, record: dict) -> None:
        append_jsonl(self.geffect_path, json_safe(record))

    def read_geffect(self) -> list[dict]:
        return read_jsonl(self.geffect_path, torn_tail=True) if self.geffect_path.exists() else []

    def keep_geffect_until(self, step: int) -> list[dict]:
        """Like `keep_log_until` for the G-effect records; a fresh run removes an old file."""
        return _keep_until(self.geffect_path, step, ensure_ascii=True, remove_when_fresh=True)

    def write_layout(self, layout: dict) -> None:
        atomic_write_json(self.layout_path, layout)

    # --- summary.json --------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text(encoding="utf-8")) if self.finished else {}


def _keep_until(path: Path, step: int, ensure_ascii: bool, remove_when_fresh: bool = False) -> list[dict]:
    if not path.exists():
        return []
    if step == 0 and remove_when_fresh:
        path.unlink()
        return []
    kept = [record for record in read_jsonl(path, torn_tail=True) if int(record.get("step", 0)) <= step] if step else []
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=ensure_ascii) + "\n" for record in kept))
    return kept
