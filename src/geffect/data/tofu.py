"""TOFU splits from the hub (`locuslab/TOFU`) or from a local folder of JSON Lines files with the hub's names.

The built-in benchmark (`geffect.data.synth`) writes the same layout, plus `general.json`, the general-knowledge
corpus that stands in for pre-training of the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

from geffect.errors import UsageError
from geffect.models.validate import HUB_ID

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
    """A path, or a name not shaped like a hub id (owner/name): a missing folder, said at once, not a hub query."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or not HUB_ID.match(source)


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


# --- a slice of TOFU for small machines ---------------------------------------------------------------------

QA_PER_AUTHOR = 20  # TOFU and the built-in benchmark: 20 question-answer pairs per author, authors contiguous
SLICE_FILE = "SLICE.json"


def write_slice(source: str, forget: str, retain_authors: int, out: str | Path) -> dict:
    """Write a TOFU-layout folder at `out` holding `forget`'s authors plus the first `retain_authors` retain
    authors; returns the slice record (also written to `out/SLICE.json`).

    Every split stays consistent with the sliced retain set: `full` = those retain authors + the forget
    authors, `retain_perturbed` only its items about those retain authors; the forget split, its perturbed
    set, the holdout, real authors and world facts are about other people and are copied whole. The other
    forget splits (and their retain sets) are left out: the slice is made for one forget split.
    """
    if forget not in FORGET_SPLITS:
        raise UsageError(f"unknown forget split {forget!r}; choose one of {', '.join(FORGET_SPLITS)}")
    retain_split = RETAIN_FOR_FORGET[forget]
    retain = load_split(source, retain_split)
    n_retain_authors = len(retain) // QA_PER_AUTHOR
    if not 1 <= retain_authors <= n_retain_authors:
        raise UsageError(
            f"retain_authors must be 1..{n_retain_authors} for {source} {retain_split}, got {retain_authors}"
        )
    kept_retain = retain[: retain_authors * QA_PER_AUTHOR]
    forget_records = load_split(source, forget)
    splits: dict[str, list[dict]] = {
        "full": _sliced_full(load_split(source, "full"), kept_retain, forget_records, source),
        forget: forget_records,
        retain_split: kept_retain,
        "retain_perturbed": _matching_prefix(load_split(source, "retain_perturbed"), kept_retain),
    }
    present = set(available_splits(source))
    for name in (
        f"{forget}_perturbed",
        HOLDOUT_FOR_FORGET[forget],
        "real_authors",
        "real_authors_perturbed",
        "world_facts",
        "world_facts_perturbed",
        GENERAL_SPLIT,
    ):
        if name in present or (name != GENERAL_SPLIT and not is_local(source)):
            splits[name] = load_split(source, name)
    if not splits["retain_perturbed"]:
        raise UsageError(f"no retain_perturbed item of {source} is about the first {retain_authors} retain authors")
    record = {
        "source": str(source),
        "forget": forget,
        "retain_authors": retain_authors,
        "forget_authors": len(forget_records) // QA_PER_AUTHOR,
        "counts": {name: len(records) for name, records in splits.items()},
    }
    _write_folder(Path(out).expanduser(), splits, record)
    return record


def _questions(records: list[dict]) -> list[str]:
    return [r["question"] for r in records]


def _sliced_full(full: list[dict], kept_retain: list[dict], forget: list[dict], source: str) -> list[dict]:
    """The kept retain authors (full's first ones) and the forget authors (its last ones), by position:
    TOFU repeats a few question texts across authors, so matching by text would keep extra items."""
    head, tail = full[: len(kept_retain)], full[len(full) - len(forget) :]
    if _questions(head) != _questions(kept_retain) or _questions(tail) != _questions(forget):
        raise UsageError(
            f"{source}: full is not the retain authors followed by the forget authors; cannot slice it by author"
        )
    return head + tail


def _matching_prefix(records: list[dict], kept: list[dict]) -> list[dict]:
    """The leading items of `records` (retain_perturbed = full[:400]) that are about the kept authors."""
    count = 0
    for record, wanted in zip(records, kept):
        if record["question"] != wanted["question"]:
            break
        count += 1
    return records[:count]


def _write_folder(out: Path, splits: dict[str, list[dict]], record: dict) -> None:
    from geffect.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        atomic_write_text(out / f"{name}.json", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(out / SLICE_FILE, record)


def slice_record(source: str) -> dict | None:
    """The slice a local TOFU folder was cut as (its SLICE.json), or None for a whole benchmark."""
    if not is_local(source):
        return None
    path = Path(source).expanduser() / SLICE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
