"""Output folders that replacing would destroy what the user had: the current folder, one of its parents, an
empty --out, or a folder that holds the command's own inputs. Each is refused with one line and exit 2, and
every file that was there before is still there, byte for byte."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

import geffect.cli.main as cli_main
from test_training_support import tiny_paths


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path_factory, tmp_path, monkeypatch):
    """A working folder (inside tmp_path, so that `..` is tmp_path: a regression deletes nothing outside it)
    holding a user's file, a run folder RUN with the model and data inside, and a study file. The filesystem
    root is refused by the same rule as `..` (a parent of the current folder); it is not tried here."""
    data, model = tiny_paths(tmp_path_factory)
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    (tmp_path / "notes.txt").write_text("a user's file\n")
    run = tmp_path / "RUN"
    shutil.copytree(model, run / "model")
    shutil.copytree(data, run / "bench")
    study = {"name": "s", "benchmark": {"builtin": {"authors": 20}}, "model": "tiny", "methods": ["GA"]}
    (tmp_path / "study.yml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(tmp_path)
    return {"DATA": data, "MODEL": model, "RUN": str(run), "HERE": str(tmp_path)}


UNLEARN = ["unlearn", "--method", "GA", "--max-steps", "1", "--no-progress"]
CASES = [  # (command line, fragment of the one-line error)
    ([*UNLEARN, "--model", "MODEL", "--data", "DATA", "--out", ".", "--overwrite"], "is the current folder"),
    ([*UNLEARN, "--model", "MODEL", "--data", "DATA", "--out", "", "--overwrite"], "--out is empty"),
    ([*UNLEARN, "--model", "MODEL", "--data", "DATA", "--out", "..", "--overwrite"], "one of its parents"),
    ([*UNLEARN, "--model", "RUN/model", "--data", "RUN/bench", "--out", "RUN", "--overwrite"], "holds the input RUN/model"),
    (["eval", "--model", "RUN/model", "--data", "DATA", "--out", "RUN", "--overwrite"], "holds the input RUN/model"),
    (["eval", "--model", "MODEL", "--data", "DATA", "--out", ".", "--overwrite"], "is the current folder"),
    (["data", "synth", "--out", ".", "--overwrite"], "is the current folder"),
    (["data", "synth", "--out", ""], "--out is empty"),
    (["finetune", "--data", "DATA", "--out", ".", "--overwrite", "--max-steps", "1"], "is the current folder"),
    (["finetune", "--data", "RUN/bench", "--out", "RUN", "--overwrite", "--max-steps", "1"], "holds the input RUN/bench"),
    (["study", "study.yml", "--out", ".", "--overwrite"], "is the current folder"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:2]) + f" [{i}]" for i, (a, _) in enumerate(CASES)])
def test_a_destructive_out_is_refused_and_nothing_is_lost(workspace, capsys, argv, message):
    here = Path(workspace["HERE"]).parent
    before = _snapshot(here)
    capsys.readouterr()
    code = cli_main.main([workspace.get(a, a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("geffect: error:") and message in err, err
    assert _snapshot(here) == before


def test_the_filesystem_root_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from geffect.errors import UsageError
    from geffect.io import check_output_place

    work = tmp_path / "work"
    (work / "inputs").mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in ("/", str(tmp_path)):
        with pytest.raises(UsageError, match="one of its parents"):
            check_output_place(out)
    check_output_place(work / "new", inputs=[work / "inputs", "org/hub-id", None])  # a new folder is fine
    (tmp_path / "elsewhere" / "model").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds the input"):
        check_output_place(tmp_path / "elsewhere", inputs=[tmp_path / "elsewhere" / "model"])


def test_overwrite_replaces_a_run_only_once_the_new_one_has_finished(tmp_path_factory, tmp_path):
    """unlearn --overwrite writes into .RUN.incoming: a run that fails leaves the old folder byte for byte;
    one that finishes replaces it whole (nothing of the old run is left) and leaves no staging folder."""
    from geffect.training.unlearn import unlearn
    from test_training_resume import Crash, CrashAt
    from test_training_support import config

    data, model = tiny_paths(tmp_path_factory)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run / "old-figure.png").write_bytes(b"earlier results")
    before = _snapshot(tmp_path)
    options = dict(method="GA", max_steps=2, overwrite=True)
    with pytest.raises(Crash):
        unlearn(config(data, model, run, **options), callbacks=[CrashAt(2)])
    assert _snapshot(tmp_path) == before
    result = unlearn(config(data, model, run, **options))
    assert result.run_dir == run and (run / "summary.json").exists() and (run / "model").is_dir()
    assert not (run / "old-figure.png").exists() and not (run / ".geffect.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert yaml.safe_load((run / "config.yaml").read_text())["options"]["out"] == str(run.resolve())
