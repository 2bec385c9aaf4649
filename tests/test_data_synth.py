"""The built-in benchmark: determinism, split relations, fields and counts, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geffect.cli import main as cli_main
from geffect.data import synth
from geffect.data.synth import write_benchmark
from geffect.data.tofu import GENERAL_SPLIT, SPLITS, load_split, split_counts
from geffect.errors import UsageError

PERTURBED_KEYS = ["question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"]
# Hand-computed for 100 authors x 20 QA: forget = last 1/5/10 authors, holdout the same sizes.
COUNTS_100 = {
    "full": 2000,
    "forget01": 20,
    "forget05": 100,
    "forget10": 200,
    "retain99": 1980,
    "retain95": 1900,
    "retain90": 1800,
    "forget01_perturbed": 20,
    "forget05_perturbed": 100,
    "forget10_perturbed": 200,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
    "holdout01": 20,
    "holdout05": 100,
    "holdout10": 200,
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b100"
    write_benchmark(out, n_authors=100, seed=0)
    return out


def split(folder: Path, name: str) -> list[dict]:
    return load_split(str(folder), name)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_counts_and_files(bench):
    counts = split_counts(str(bench))
    general = counts.pop(GENERAL_SPLIT)
    assert counts == COUNTS_100
    assert 200 <= general <= 1000
    expected_files = {f"{name}.json" for name in (*SPLITS, GENERAL_SPLIT)} | {"benchmark.json", "SOURCE.md"}
    assert {p.name for p in bench.iterdir()} == expected_files
    manifest = json.loads((bench / "benchmark.json").read_text())
    assert (manifest["seed"], manifest["n_authors"]) == (0, 100)
    assert manifest["forget_authors"] == {"forget01": 1, "forget05": 5, "forget10": 10}
    assert manifest["counts"] == {**COUNTS_100, GENERAL_SPLIT: general}


def test_same_seed_byte_identical_other_seed_differs(bench, tmp_path):
    again = tmp_path / "again"
    write_benchmark(again, n_authors=100, seed=0)
    assert file_bytes(again) == file_bytes(bench)

    other = tmp_path / "other"
    write_benchmark(other, n_authors=100, seed=1)
    names0 = {r["answer"] for r in split(bench, "full")[::20]}  # the name item opens each author
    names1 = {r["answer"] for r in split(other, "full")[::20]}
    assert len(names0 & names1) < 10
    # The general corpus is the shared "world": the same for every seed.
    assert (other / "general.json").read_bytes() == (bench / "general.json").read_bytes()


def test_identical_across_processes_with_other_hash_seed(bench, tmp_path):
    """No dependence on set or dict order: another interpreter with another PYTHONHASHSEED writes the same bytes."""
    out = tmp_path / "proc"
    code = f"from geffect.data.synth import write_benchmark; write_benchmark({str(out)!r}, 100, 0)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert file_bytes(out) == file_bytes(bench)


def test_forget_is_tail_of_full_and_retain_the_rest(bench):
    full = split(bench, "full")
    for forget, retain, n_items in (
        ("forget01", "retain99", 20),
        ("forget05", "retain95", 100),
        ("forget10", "retain90", 200),
    ):
        assert split(bench, forget) == full[-n_items:]
        assert split(bench, retain) == full[:-n_items]


def test_items_grouped_by_author(bench):
    full = split(bench, "full")
    assert len({r["question"] for r in full}) == len(full)
    for start in range(0, len(full), 20):
        name = full[start]["answer"].removeprefix("The author's full name is ").removesuffix(".")
        others = full[start + 1 : start + 20]
        assert all(name in r["question"] or name in r["answer"] for r in others)


def test_every_fact_is_asked_twice_and_its_paraphrase_is_held_out(bench):
    """Items 2k and 2k+1 of an author ask the same fact in two trained phrasings; the `_perturbed` files'
    paraphrase is a third phrasing that no training item uses, as in TOFU."""
    full = split(bench, "full")
    trained = {r["question"] for r in full} | {r["answer"] for r in full}
    for name in ("forget10_perturbed", "retain_perturbed"):
        records = split(bench, name)
        for first, second in zip(records[::2], records[1::2]):
            assert first["question"] != second["question"] and first["answer"] != second["answer"]
            assert (first["paraphrased_question"], first["paraphrased_answer"]) == (
                second["paraphrased_question"],
                second["paraphrased_answer"],
            )
            assert first["paraphrased_question"] not in trained and first["paraphrased_answer"] not in trained


def test_perturbed_sets_match_base_sets(bench):
    full = split(bench, "full")
    pairs = [(f"{f}_perturbed", f) for f in ("forget01", "forget05", "forget10")]
    for perturbed, base in pairs:
        records = split(bench, perturbed)
        assert [(r["question"], r["answer"]) for r in records] == [
            (r["question"], r["answer"]) for r in split(bench, base)
        ]
    retain_perturbed = split(bench, "retain_perturbed")
    assert [(r["question"], r["answer"]) for r in retain_perturbed] == [
        (r["question"], r["answer"]) for r in full[:400]
    ]
    forget10 = {r["question"] for r in split(bench, "forget10")}
    assert not forget10 & {r["question"] for r in retain_perturbed}


def test_perturbed_fields(bench):
    for name in ("forget10_perturbed", "retain_perturbed"):
        for r in split(bench, name):
            assert list(r) == PERTURBED_KEYS
            perturbed = r["perturbed_answer"]
            assert len(perturbed) == 5 and len(set(perturbed)) == 5
            assert r["answer"] not in perturbed and r["paraphrased_answer"] not in perturbed
            assert r["paraphrased_answer"] != r["answer"]
            assert r["paraphrased_question"] != r["question"]
            # Perturbations keep the paraphrase's shape: same first or last word, different fact.
            para = r["paraphrased_answer"].split()
            for p in perturbed:
                words = p.split()
                assert words[0] == para[0] or words[-1] == para[-1]


def test_answers_short_and_contain_fact(bench):
    for r in split(bench, "full"):
        assert 4 <= len(r["answer"].split()) <= 20
    # The fact of a paraphrase is also in the answer: the words that perturbations change appear in both.
    for r in split(bench, "forget10_perturbed"):
        para, answer = set(r["paraphrased_answer"].rstrip(".").split()), set(r["answer"].rstrip(".").split())
        changed = set().union(*(para - set(p.rstrip(".").split()) for p in r["perturbed_answer"]))
        assert changed and changed <= answer, r


def test_holdout_disjoint_from_full(bench):
    full = split(bench, "full")
    full_names = {r["answer"] for r in full[::20]}
    holdout10 = split(bench, "holdout10")
    holdout_names = {r["answer"] for r in holdout10[::20]}
    assert len(holdout_names) == 10 and not full_names & holdout_names
    assert not {r["question"] for r in full} & {r["question"] for r in holdout10}
    assert split(bench, "holdout01") == holdout10[:20]
    assert split(bench, "holdout05") == holdout10[:100]


def test_real_authors_and_world_facts_drawn_from_general(bench):
    general = {(r["question"], r["answer"]) for r in split(bench, GENERAL_SPLIT)}
    full_questions = {r["question"] for r in split(bench, "full")}
    assert not full_questions & {q for q, _ in general}
    for name in ("real_authors", "world_facts"):
        choice = split(bench, name)
        perturbed = split(bench, f"{name}_perturbed")
        assert [(r["question"], r["answer"]) for r in choice] == [(r["question"], r["answer"]) for r in perturbed]
        for mc, pr in zip(choice, perturbed):
            assert (mc["question"], mc["answer"]) in general
            assert list(mc) == ["question", "option1", "option2", "option3", "option4", "answer"]
            options = [mc[f"option{i}"] for i in range(1, 5)]
            assert options.count(mc["answer"]) == 1
            assert list(pr) == ["question", "answer", "perturbed_answer"]
            assert len(set(pr["perturbed_answer"])) == 3 and mc["answer"] not in pr["perturbed_answer"]
            assert sorted(pr["perturbed_answer"]) == sorted(o for o in options if o != mc["answer"])
    # The correct option is not always in the same place.
    assert len({[r[f"option{i}"] for i in range(1, 5)].index(r["answer"]) for r in split(bench, "world_facts")}) == 4


@pytest.mark.parametrize(
    ("n_authors", "forget_authors"),
    [(10, (1, 1, 1)), (30, (1, 2, 3)), (50, (1, 3, 5)), (150, (2, 8, 15)), (200, (2, 10, 20))],
)
def test_rounding_rule_for_forget_sizes(n_authors, forget_authors):
    splits = synth.generate_benchmark(n_authors, seed=3)
    for name, k in zip(("forget01", "forget05", "forget10"), forget_authors):
        assert len(splits[name]) == 20 * k
        assert len(splits[name.replace("forget", "holdout")]) == 20 * k
    assert len(splits["full"]) == 20 * n_authors
    assert len(splits["retain_perturbed"]) == min(400, 20 * (n_authors - forget_authors[2]))


@pytest.mark.parametrize("n_authors", [9, 0, -5, 501, 12.5, "100", True])
def test_bad_author_count(tmp_path, n_authors):
    with pytest.raises(UsageError, match="--authors"):
        write_benchmark(tmp_path / "b", n_authors=n_authors)
    assert not (tmp_path / "b").exists()


def test_existing_folder_refused_unless_overwrite(tmp_path):
    out = tmp_path / "b"
    write_benchmark(out, n_authors=10, seed=0)
    (out / "stale.json").write_text("{}\n")
    with pytest.raises(UsageError, match="--overwrite"):
        write_benchmark(out, n_authors=10, seed=1)
    assert (out / "stale.json").exists()
    counts = write_benchmark(out, n_authors=20, seed=1, overwrite=True)
    assert counts["full"] == 400 and not (out / "stale.json").exists()


@pytest.fixture
def data_cli(monkeypatch):
    """`geffect.cli.main.main` with only the data command registered (other commands are not under test)."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("data",))
    return cli_main.main


def test_cli_synth_and_stats(data_cli, tmp_path, capsys):
    out = tmp_path / "b"
    assert data_cli(["data", "synth", "--out", str(out), "--authors", "20", "--seed", "5"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["full"] == 400 and written["forget10"] == 40
    assert data_cli(["data", "stats", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and json.loads(printed) == written

    assert data_cli(["data", "synth", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err


def test_cli_bad_authors(data_cli, tmp_path, capsys):
    assert data_cli(["data", "synth", "--out", str(tmp_path / "b"), "--authors", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("geffect: error: --authors")
    with pytest.raises(SystemExit) as exit_info:
        data_cli(["data", "synth", "--out", str(tmp_path / "b"), "--authors", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
