"""TOFU loader on the offline copy of the real data, and its one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geffect.cli import main as cli_main
from geffect.data.tofu import SPLITS, available_splits, load_split, split_counts
from geffect.errors import UsageError
from prerequisites import TOFU_DIR

TOFU = str(TOFU_DIR)  # the local TOFU copy: tests marked needs_tofu read it
# From TOFU's SOURCE.md / the paper: 200 authors x 20 QA, forget = last 2/10/20 authors.
REAL_COUNTS = {
    "full": 4000,
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "retain99": 3960,
    "retain95": 3800,
    "retain90": 3600,
    "forget01_perturbed": 40,
    "forget05_perturbed": 200,
    "forget10_perturbed": 400,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
    "holdout01": 40,
    "holdout05": 200,
    "holdout10": 400,
}


@pytest.fixture
def data_cli(monkeypatch):
    """`geffect.cli.main.main` with only the data command registered (other commands are not under test)."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("data",))
    return cli_main.main


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.needs_tofu
def test_real_tofu_counts():
    assert split_counts(TOFU) == REAL_COUNTS
    assert available_splits(TOFU) == list(SPLITS)


@pytest.mark.needs_tofu
def test_real_tofu_split_relations():
    full = load_split(TOFU, "full")
    assert load_split(TOFU, "forget10") == full[-400:]
    assert load_split(TOFU, "retain90") == full[:-400]
    perturbed = load_split(TOFU, "forget10_perturbed")
    assert all(len(r["perturbed_answer"]) == 5 and "paraphrased_answer" in r for r in perturbed)
    assert all(len(r["perturbed_answer"]) == 3 for r in load_split(TOFU, "world_facts_perturbed"))


@pytest.mark.needs_tofu
def test_stats_cli_prints_one_json_object(data_cli, capsys):
    assert data_cli(["data", "stats", "--data", TOFU]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == REAL_COUNTS


@pytest.mark.needs_tofu
def test_unknown_split():
    with pytest.raises(UsageError, match="unknown split 'forget20'"):
        load_split(TOFU, "forget20")


def test_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_split(str(tmp_path / "nope"), "full")


def test_missing_split_file(tmp_path):
    write_jsonl(tmp_path / "full.json", [{"question": "q", "answer": "a"}])
    assert split_counts(str(tmp_path)) == {"full": 1}
    with pytest.raises(UsageError, match="forget10.json is missing"):
        load_split(str(tmp_path), "forget10")


def test_folder_without_split_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(UsageError, match="holds no TOFU split files"):
        split_counts(str(tmp_path))


@pytest.mark.parametrize(
    ("split", "record", "missing"),
    [
        ("full", {"question": "q"}, "answer"),
        ("full", {"prompt": "q", "answer": "a"}, "question"),
        ("forget10_perturbed", {"question": "q", "answer": "a"}, "perturbed_answer"),
    ],
)
def test_record_without_required_field(tmp_path, split, record, missing):
    write_jsonl(tmp_path / f"{split}.json", [{"question": "q0", "answer": "a0", "perturbed_answer": []}, record])
    with pytest.raises(UsageError, match=f"record 1 lacks field\\(s\\) {missing}"):
        load_split(str(tmp_path), split)


def test_not_json_lines(tmp_path):
    (tmp_path / "full.json").write_text('[{"question": "q", "answer": "a"},\n')
    with pytest.raises(UsageError, match="full.json:1 is not valid JSON Lines"):
        load_split(str(tmp_path), "full")


def test_empty_split(tmp_path):
    (tmp_path / "full.json").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        load_split(str(tmp_path), "full")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: str(tmp / "missing"), "does not exist"),
        (lambda tmp: (write_jsonl(tmp / "full.json", [{"question": "q"}]), str(tmp))[1], "lacks field(s) answer"),
    ],
)
def test_cli_bad_data_exits_2_with_one_line(data_cli, capsys, tmp_path, make, needle):
    assert data_cli(["data", "stats", "--data", make(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("geffect: error: ") and needle in captured.err


# --- the retain_authors slice ---------------------------------------------------------------------------------


def _slice_checks(source: str, out: Path, forget: str, n: int) -> dict:
    """Every split of the slice is consistent with the source, checked against the source's own files."""
    from geffect.data.tofu import HOLDOUT_FOR_FORGET, RETAIN_FOR_FORGET, SLICE_FILE, write_slice

    record = write_slice(source, forget, n, out)
    sliced = str(out)
    retain = load_split(source, RETAIN_FOR_FORGET[forget])
    kept = load_split(sliced, RETAIN_FOR_FORGET[forget])
    assert kept == retain[: 20 * n]
    assert load_split(sliced, forget) == load_split(source, forget)
    full = load_split(source, "full")
    assert load_split(sliced, "full") == full[: 20 * n] + full[-len(load_split(source, forget)) :]
    kept_questions = [r["question"] for r in kept]
    perturbed = load_split(sliced, "retain_perturbed")
    assert [r["question"] for r in perturbed] == kept_questions[: len(perturbed)]
    assert len(perturbed) == min(20 * n, len(load_split(source, "retain_perturbed")))
    for name in (f"{forget}_perturbed", HOLDOUT_FOR_FORGET[forget], "real_authors_perturbed", "world_facts_perturbed"):
        assert load_split(sliced, name) == load_split(source, name)
    other = [s for s in ("forget01", "forget05", "forget10") if s != forget]
    assert not any((out / f"{s}.json").exists() for s in other)  # the slice is for one forget split
    assert json.loads((out / SLICE_FILE).read_text()) == record
    assert record["retain_authors"] == n and record["counts"][RETAIN_FOR_FORGET[forget]] == 20 * n
    return record


@pytest.mark.needs_tofu
def test_real_tofu_slice_keeps_every_split_consistent(tmp_path):
    record = _slice_checks(TOFU, tmp_path / "slice", "forget01", 8)
    assert record["counts"]["full"] == 200 and record["counts"]["retain_perturbed"] == 160
    assert record["forget_authors"] == 2


def test_slice_of_the_builtin_benchmark_and_its_errors(tiny_benchmark, tmp_path):
    _slice_checks(str(tiny_benchmark), tmp_path / "slice", "forget10", 3)
    with pytest.raises(UsageError, match="retain_authors must be 1..18"):
        _slice_checks(str(tiny_benchmark), tmp_path / "bad", "forget10", 19)


def test_slice_cli_is_recorded_by_runs_on_it(data_cli, tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "cut"
    argv = ["data", "slice", "--data", str(tiny_benchmark), "--forget", "forget10", "--retain-authors", "2"]
    assert data_cli([*argv, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    from geffect.data.tofu import slice_record

    assert slice_record(str(out)) == printed and slice_record(str(tiny_benchmark)) is None
    assert data_cli([*argv, "--out", str(out)]) == 2  # refused: the folder exists (nothing deleted)
    assert "exists" in capsys.readouterr().err


def test_study_benchmark_slice_is_validated(tmp_path):
    from geffect.study.config import parse_config

    def config(**bench):
        return {"benchmark": bench, "model": {"base": "tiny"}, "methods": ["GA"], "forget_splits": ["forget01"]}

    parsed = parse_config(config(source=str(tmp_path), retain_authors=8))
    assert parsed.benchmark.retain_authors == 8
    with pytest.raises(UsageError, match="benchmark.retain_authors"):
        parse_config(config(source=str(tmp_path), retain_authors=0))
    with pytest.raises(UsageError, match="benchmark.retain_authors"):
        parse_config({**config(source=str(tmp_path), retain_authors=8), "forget_splits": ["forget01", "forget05"]})
