"""One unlearning run's folder: the only place that knows its file names and reads and writes its files.

RUN/config.yaml          options, resolved values and the settings callbacks recorded
RUN/log.jsonl            one line per optimizer step
RUN/geffect.jsonl        one G-effect record per measured step (docs/geffect-format.md)
RUN/geffect_layout.json  the parameter layout of those records
RUN/checkpoints/         step-NNNNNNNN folders (geffect.training.checkpoint)
RUN/model/               the final save_pretrained folder
RUN/summary.json         written last: its presence marks a finished run
RUN/figures/             `geffect plot`'s figures
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from geffect.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl


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

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

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
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def write_config(self, document: dict) -> None:
        import yaml

        atomic_write_text(self.config_path, yaml.safe_dump(document, sort_keys=False))

    # --- log.jsonl -----------------------------------------------------------------------------------------
    def append_log(self, record: dict) -> None:
        append_jsonl(self.log_path, record)

    def read_log(self) -> list[dict]:
        return read_jsonl(self.log_path) if self.log_path.exists() else []

    def keep_log_until(self, step: int) -> list[dict]:
        """A resumed run continues the log of its checkpoint: later lines (lost work) are dropped; a fresh
        run (`step` 0) starts an empty log. Returns the lines kept."""
        return _keep_until(self.log_path, step, ensure_ascii=False)

    # --- geffect.jsonl -------------------------------------------------------------------------------------
    def append_geffect(self, record: dict) -> None:
        append_jsonl(self.geffect_path, json_safe(record))

    def read_geffect(self) -> list[dict]:
        return read_jsonl(self.geffect_path) if self.geffect_path.exists() else []

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
    kept = [record for record in read_jsonl(path) if int(record.get("step", 0)) <= step] if step else []
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=ensure_ascii) + "\n" for record in kept))
    return kept
