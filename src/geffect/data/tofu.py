"""TOFU splits from the hub (`locuslab/TOFU`) or from a local folder of JSON Lines files with the hub's names.

The built-in benchmark (`geffect.data.synth`) writes the same layout, plus `general.json`, the general-knowledge
corpus that stands in for pre-training of the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

from geffect.errors import UsageError

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_FOR_FORGET = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT_FOR_FORGET = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}

SPLITS: tuple[str, ...] = (
    "full",
    *FORGET_SPLITS,
    *RETAIN_FOR_FORGET.values(),
    *(f"{name}_perturbed" for name in FORGET_SPLITS),
    "retain_perturbed",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
    *HOLDOUT_FOR_FORGET.values(),
)
GENERAL_SPLIT = "general"  # built-in benchmark only

REQUIRED_FIELDS = ("question", "answer")
PERTURBED_FIELDS = ("perturbed_answer",)


def is_local(source: str) -> bool:
    return Path(source).exists() or source.startswith((".", "/", "~"))


def available_splits(source: str) -> list[str]:
    """Splits present at `source`, in canonical order (local folders may hold a subset)."""
    if is_local(source):
        folder = _local_folder(source)
        names = [s for s in (*SPLITS, GENERAL_SPLIT) if (folder / f"{s}.json").exists()]
        if not names:
            raise UsageError(
                f"{folder} holds no TOFU split files (full.json, forget10.json, ...); point --data at a TOFU folder"
            )
        return names
    return list(SPLITS)


def load_split(source: str, split: str) -> list[dict]:
    """Records of one split, as a list of dicts with at least `question` and `answer`."""
    if split not in SPLITS and split != GENERAL_SPLIT:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    records = _load_local(source, split) if is_local(source) else _load_hub(source, split)
    _validate(records, split, source)
    return records


def _local_folder(source: str) -> Path:
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist; pass a TOFU folder or a hub id such as locuslab/TOFU")
    return folder


def _load_local(source: str, split: str) -> list[dict]:
    path = _local_folder(source) / f"{split}.json"
    if not path.exists():
        raise UsageError(f"split {split!r} not found: {path} is missing")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UsageError(
                    f"{path}:{number} is not valid JSON Lines ({err.msg}); expected one record a line"
                ) from None
    return records


def _load_hub(source: str, split: str) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(source, split, split="train")
    except Exception as err:  # the hub client raises many types; the user needs one line
        raise UsageError(
            f"could not load {source!r} config {split!r} from the hub: {str(err).splitlines()[0]}"
        ) from None
    return [dict(row) for row in dataset]


def _validate(records: list[dict], split: str, source: str) -> None:
    if not records:
        raise UsageError(f"split {split!r} at {source} is empty")
    needed = REQUIRED_FIELDS + (PERTURBED_FIELDS if split.endswith("_perturbed") else ())
    for number, record in enumerate(records):
        missing = [field for field in needed if field not in record]
        if missing:
            raise UsageError(
                f"split {split!r} at {source}: record {number} lacks field(s) {', '.join(missing)}; "
                "each record needs question and answer"
            )


def split_counts(source: str) -> dict[str, int]:
    return {split: len(load_split(source, split)) for split in available_splits(source)}
