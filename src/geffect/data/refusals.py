"""Refusal answers ("I don't know"-style) for IdkPO and IdkDPO: ours (package data) or a file of your own.

By default each forget item gets one refusal, chosen deterministically from (item index, seed), so reruns and
every rank of a distributed run see the same pairing. `per_visit` sampling draws a new one each time the item is
used, as OpenUnlearning does (d3d7cf9, src/data/qa.py QAwithIdkDataset.item_with_idk: a uniform draw from
`idk_path`'s lines at every __getitem__); our draw hashes (seed, item, visit number), so a run is reproducible.

A refusals file (`--refusals FILE`) is a text file with one refusal a line, or JSON Lines like TOFU's
`idontknow.jsonl` / OpenUnlearning's `data/idk.jsonl`: a line that parses as a JSON string, or an object with
one string value, gives that string; any other line is taken as it is (OpenUnlearning reads the raw lines).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Callable

from geffect.errors import UsageError

RESOURCE = "refusals.txt"
SAMPLING = ("fixed", "per_visit")


@functools.cache
def _packaged() -> tuple[str, ...]:
    text = resources.files("geffect").joinpath("resources", RESOURCE).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _parse_line(line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0].strip()
    return line


def read_refusals(path: str | Path) -> tuple[str, ...]:
    """The refusals of a text or JSON Lines file (UsageError if it is missing, unreadable or empty)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--refusals {path}: cannot read it ({err}); pass a text or JSON Lines file") from None
    refusals = tuple(r for r in (_parse_line(line.strip()) for line in text.splitlines() if line.strip()) if r)
    if not refusals:
        raise UsageError(f"--refusals {path} holds no refusal; write one a line")
    return refusals


def load_refusals(path: str | Path | None = None) -> list[str]:
    """All refusal sentences, in file order (ours when `path` is None)."""
    return list(_packaged() if path is None else read_refusals(path))


def _pick(refusals: Sequence[str], key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return refusals[int.from_bytes(digest[:8], "big") % len(refusals)]


def refusal_for(index: int, seed: int = 0, refusals: Sequence[str] | None = None, visit: int | None = None) -> str:
    """The refusal for item `index` under `seed` (and, per visit, its `visit`-th use): a hash, not a random
    stream, so it does not depend on order."""
    choices = _packaged() if refusals is None else refusals
    return _pick(choices, f"{seed}:{index}" if visit is None else f"{seed}:{index}:{visit}")


class PerVisitItems(Sequence):
    """Encoded refusal items that change at every use: item i's k-th access is encoded with its k-th refusal.

    The trainer collates `items[i]` once per use of forget item i, so the k-th access is its k-th visit. The count
    lives in this object: a resumed run starts counting again (the run's config refuses that combination).
    """

    def __init__(self, n_items: int, encode: Callable[[int, str], object], refusals: Sequence[str], seed: int):
        self._encode, self._refusals, self._seed = encode, refusals, seed
        self._visits = [0] * n_items

    def __len__(self) -> int:
        return len(self._visits)

    def __getitem__(self, index):  # type: ignore[override]
        visit = self._visits[index]
        self._visits[index] += 1
        return self._encode(index, refusal_for(index, self._seed, self._refusals, visit))


def refusal_items(records: Sequence[dict], encode_one: Callable[[int, str], object], path, sampling: str, seed: int):
    """The forget questions with refusal answers, fixed per item (a list) or drawn per visit (PerVisitItems).
    `encode_one(index, refusal)` encodes record `index`'s question with that answer."""
    refusals = load_refusals(path)
    if sampling == "per_visit":
        return PerVisitItems(len(records), encode_one, refusals, seed)
    return [encode_one(i, refusal_for(i, seed, refusals)) for i in range(len(records))]


def read_alternates_file(path: str | Path) -> dict[str, str]:
    """question -> alternate answer, from AltPO's JSON Lines (UsageError naming the line when one is wrong)."""
    path = Path(path)
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--alternates {path}: not a readable JSON Lines file ({err})") from None
    by_question = {}
    for number, line in enumerate(lines, 1):
        if not isinstance(line, dict) or not isinstance(line.get("alternate"), str) or "question" not in line:
            raise UsageError(f"--alternates {path} line {number}: expected an object with question and alternate")
        by_question[line["question"]] = line["alternate"].strip()
    if not by_question:
        raise UsageError(f"--alternates {path} holds no alternate answer")
    return by_question


def read_alternates(path: str | Path, records: Sequence[dict]) -> list[str]:
    """AltPO's alternate answer of each forget record, from JSON Lines of {"question", "answer", "alternate"} (what
    OpenUnlearning d3d7cf9 community/methods/AltPO/generate.py writes; QAwithAlternateDataset reads `alternate`),
    matched to the records by question."""
    by_question = read_alternates_file(path)
    missing = [r["question"] for r in records if r["question"] not in by_question]
    if missing:
        raise UsageError(
            f"--alternates {path} has no alternate for {len(missing)} forget questions, e.g. {missing[0]!r}"
        )
    return [by_question[r["question"]] for r in records]


def preferred_items(records: Sequence[dict], encode_one: Callable[[int, str], object], config) -> Sequence:
    """The preferred answers of IdkPO/DPO (refusals) or AltPO (`config.alternates`), encoded per forget record."""
    if getattr(config, "alternates", None):
        return [encode_one(i, answer) for i, answer in enumerate(read_alternates(config.alternates, records))]
    return refusal_items(records, encode_one, config.refusals, config.refusal_sampling, config.seed)
