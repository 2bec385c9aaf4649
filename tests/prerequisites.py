"""Where the tests find what the repository does not ship, and what happens when it is missing.

Three prerequisites, each named by a marker that tests/conftest.py handles:

- ``needs_tofu``: the local copy of TOFU (its JSON Lines split files, full.json, forget10.json, ...). Found at
  ``$GEFFECT_TOFU_DIR``, by default ``../shared/data/tofu`` next to the repository's folder.
- ``needs_tofu_logs``: the TOFU authors' evaluation logs of their Llama-2-7B models (llama2-7b_full.json,
  llama2-7b_retain90.json, ...). Found at ``$GEFFECT_TOFU_LOGS_DIR``, by default the folder ``tofu-eval-logs``
  beside the TOFU copy (``../shared/data/tofu-eval-logs`` unless GEFFECT_TOFU_DIR moves it).
- ``needs_chromium``: headless Chromium on PATH (Debian's package ``chromium``).

A test whose prerequisite is missing is skipped with a reason saying what to install or where to put the data,
and fails with the same reason when the environment variable CI is set to a non-empty value (CI sets
CI=true), so that CI never hides a test. Relative paths in the variables are taken from the current directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _folder(variable: str, default: Path) -> Path:
    value = os.environ.get(variable, "")
    return Path(value).expanduser().resolve() if value else default


TOFU_DIR = _folder("GEFFECT_TOFU_DIR", REPO_ROOT.parent / "shared" / "data" / "tofu")
TOFU_LOGS_DIR = _folder("GEFFECT_TOFU_LOGS_DIR", TOFU_DIR.parent / "tofu-eval-logs")
TOFU_LOG_NAMES = ("full", "retain90", "retain95", "retain99")  # llama2-7b_<name>.json
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def tofu_log(name: str) -> Path:
    """One of the TOFU authors' Llama-2-7B evaluation logs: full, retain90, retain95 or retain99."""
    return TOFU_LOGS_DIR / f"llama2-7b_{name}.json"


def find_chromium() -> str | None:
    """Path of the first headless-capable Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _tofu_missing() -> str | None:
    if (TOFU_DIR / "full.json").is_file():
        return None
    return (
        f"local TOFU copy not found at {TOFU_DIR}: put TOFU's JSON Lines split files (full.json, forget10.json, ...) "
        "there or set GEFFECT_TOFU_DIR"
    )


def _tofu_logs_missing() -> str | None:
    missing = [tofu_log(name).name for name in TOFU_LOG_NAMES if not tofu_log(name).is_file()]
    if not missing:
        return None
    return (
        f"TOFU authors' eval logs not found at {TOFU_LOGS_DIR} (missing {', '.join(missing)}): put them there "
        "or set GEFFECT_TOFU_LOGS_DIR"
    )


def _chromium_missing() -> str | None:
    if find_chromium():
        return None
    return f"headless Chromium not on PATH (looked for {', '.join(CHROMIUM_NAMES)}): apt-get install -y chromium"


# marker name -> (description for `pytest --markers`, check returning the reason it is missing or None)
MARKERS = {
    "needs_tofu": ("the test reads the local TOFU copy ($GEFFECT_TOFU_DIR)", _tofu_missing),
    "needs_tofu_logs": ("the test reads the TOFU authors' eval logs ($GEFFECT_TOFU_LOGS_DIR)", _tofu_logs_missing),
    "needs_chromium": ("the test runs headless Chromium", _chromium_missing),
}


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def missing_reasons(item: pytest.Item) -> list[str]:
    """Why `item` cannot run here: one reason per missing prerequisite among its markers (checked once each)."""
    names = [name for name in MARKERS if item.get_closest_marker(name) is not None]
    return [reason for name in names if (reason := _checked(name)) is not None]


_CHECKED: dict[str, str | None] = {}


def _checked(name: str) -> str | None:
    if name not in _CHECKED:
        _CHECKED[name] = MARKERS[name][1]()
    return _CHECKED[name]
