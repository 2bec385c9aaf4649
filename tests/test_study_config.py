"""Study configuration: validation errors name the key path and exit 2; dry-run plans without I/O."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

import geffect.cli.main as cli_main
from geffect.errors import UsageError
from geffect.study import parse_config, plan_study
from geffect.study.plan import run_id

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MY_COMMANDS = ("study", "demo", "plot")


@pytest.fixture
def cli(monkeypatch):
    """`geffect ...` in-process with this area's commands registered; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", MY_COMMANDS)

    def run(argv, capsys):
        code = cli_main.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def base_config(**changes) -> dict:
    config = {
        "name": "t",
        "benchmark": {"builtin": {"authors": 20, "seed": 1}},
        "model": {"base": "tiny"},
        "methods": [
            "GA",
            {"method": "NPO", "grid": {"beta": [0.1, 0.5]}},
            {"method": "WGA+KL", "params": {"beta": 2.0}},
        ],
        "forget_splits": ["forget10"],
        "seeds": [0],
        "training": {"epochs": 1, "lr": 1e-4, "batch_size": 4, "grad_accum": 1},
    }
    config.update(changes)
    return config


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


BAD_CONFIGS = [
    # (change to the base config, expected start of the message)
    ({"methods": ["GA", "NPO", "Forgetify"]}, "methods[2].method: unknown unlearning method 'Forgetify'"),
    (
        {"methods": ["GA", "NPO", {"method": "NPO", "grid": {"beta": []}}]},
        "methods[2].grid.beta: a grid needs at least one value",
    ),
    ({"methods": [{"method": "NPO", "grid": {"betta": [0.1]}}]}, "methods[0].grid.betta: unknown hyper-parameter"),
    ({"methods": [{"method": "NPO", "grid": {"beta": 0.1}}]}, "methods[0].grid.beta: expected a list, got 0.1"),
    ({"methods": [{"method": "NPO", "gird": {"beta": [0.1]}}]}, "methods[0].gird: unknown key"),
    ({"methods": [{"method": "NPO", "training": {"lrate": 1.0}}]}, "methods[0].training.lrate: unknown key"),
    ({"methods": [{"method": "NPO", "grid": {"beta": [-1.0]}}]}, "methods[0]: NPO beta=-1 must be > 0"),
    ({"methods": []}, "methods: give at least one method"),
    ({"trainng": {"epochs": 1}}, "trainng: unknown key"),
    ({"training": {"epochs": "five"}}, "training.epochs: expected an integer, got 'five'"),
    ({"training": {"epochs": 1, "lr": -1.0}}, "training: --lr must be a positive number"),
    ({"training": {"epochs": True}}, "training.epochs: expected an integer, got True"),
    ({"geffect": {"estimator": "exact"}}, "geffect.estimator: unknown estimator 'exact'"),
    ({"geffect": {"every": 0}}, "geffect.every: must be >= 1"),
    ({"eval": {"ds_sise": 3}}, "eval.ds_sise: unknown key"),
    ({"eval": {"every": 0}}, "eval.every: must be >= 1"),
    ({"eval": {"every": 2, "points_ds_size": 0}}, "eval.points_ds_size: must be >= 1"),
    (
        {"eval": {"every": 2}, "model": {"base": "tiny", "retain_logs": {"forget10": "x.json"}}},
        "eval.every: points along the runs need the retain model of forget10",
    ),
    ({"benchmark": {"builtin": {"authors": 20, "sed": 1}}}, "benchmark.builtin.sed: unknown key"),
    ({"benchmark": {"builtin": {"authors": 20}, "source": "locuslab/TOFU"}}, "benchmark: give exactly one of builtin"),
    ({"forget_splits": ["forget20"]}, "forget_splits[0]: unknown value 'forget20'"),
    ({"seeds": ["a"]}, "seeds[0]: expected an integer, got 'a'"),
    (
        {"model": {"base": "tiny", "retain": {"forget05": "x/y"}}},
        "model.retain.forget05: not one of the study's forget_splits",
    ),
    ({"template": "mistral"}, "template: unknown template 'mistral'"),
]


@pytest.mark.parametrize("change, message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_configuration_is_one_line_naming_the_key_and_exits_2(tmp_path, cli, capsys, change, message):
    path = write(tmp_path, base_config(**change))
    code, out, err = cli(["study", path, "--dry-run"], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"geffect: error: {message}"), lines[0]


def test_parse_config_raises_usage_error_with_path():
    with pytest.raises(UsageError, match=r"^methods\[1\]\.grid\.beta: a grid needs at least one value$"):
        parse_config(base_config(methods=["GA", {"method": "NPO", "grid": {"beta": []}}]))


def test_not_yaml_and_missing_file_are_usage_errors(tmp_path, cli, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [GA\n", encoding="utf-8")
    code, _, err = cli(["study", bad, "--dry-run"], capsys)
    assert code == 2 and "is not valid YAML" in err
    code, _, err = cli(["study", tmp_path / "nope.yaml", "--dry-run"], capsys)
    assert code == 2 and "does not exist" in err


def test_grid_expands_to_the_product_of_values_splits_and_seeds():
    config = parse_config(
        base_config(
            methods=[{"method": "NPO+KL", "grid": {"beta": [0.1, 0.5], "alpha": [1, 2, 3]}}, "GA"],
            forget_splits=["forget05", "forget10"],
            seeds=[0, 7],
        )
    )
    runs = plan_study(config).runs
    npo = [r for r in runs if r.method == "NPO"]
    assert len(npo) == 2 * 3 * 2 * 2 and len(runs) == len(npo) + 2 * 2
    assert {(r.hparams["beta"], r.alpha) for r in npo} == {(b, a) for b in (0.1, 0.5) for a in (1.0, 2.0, 3.0)}
    assert all(r.retain_loss == "KL" for r in npo)
    assert len({r.run_id for r in runs}) == len(runs)
    assert run_id("NPO+KL", "forget10", {"beta": 0.5}, 7) == "forget10-NPO+KL-beta0.5-seed7"


def test_method_overrides_training_options_only_for_itself():
    config = parse_config(base_config(methods=["GA", {"method": "RMU", "training": {"lr": 5e-3}}]))
    runs = {r.method: r for r in plan_study(config).runs}
    assert runs["RMU"].training["lr"] == 5e-3
    assert runs["GA"].training["lr"] == 1e-4
    assert runs["RMU"].training["epochs"] == 1


def test_duplicate_runs_are_refused():
    with pytest.raises(UsageError, match=r"^methods\[1\]: run forget10-NPO-seed0 is also produced by methods\[0\]"):
        plan_study(parse_config(base_config(methods=["NPO", "NPO"])))


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "logs").mkdir()
    config = parse_config(
        base_config(
            benchmark={"source": "data"}, model={"target": "org/model", "retain_logs": {"forget10": "logs/r.json"}}
        ),
        base_dir=tmp_path,
    )
    assert config.benchmark.source == str((tmp_path / "data").resolve())
    assert config.model.target == "org/model"  # a hub id stays a hub id
    assert config.model.retain_logs["forget10"] == str((tmp_path / "logs/r.json").resolve())
    plan = plan_study(config)
    assert plan.references[0].how == "log" and plan.references[0].retain_model is None
    assert plan.target.how == "given" and plan.finetunes == []


@pytest.fixture
def no_network_no_models(monkeypatch):
    """Fail loudly on any socket connection or any model/tokenizer/dataset load."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("dry-run tried to reach the network or load a model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import datasets
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.mark.parametrize("example, runs", [("tofu-phi.yaml", 66), ("tofu-llama2.yaml", 66), ("builtin-cpu.yaml", 21)])
def test_dry_run_of_examples_lists_runs_without_touching_anything(
    tmp_path, cli, capsys, no_network_no_models, example, runs
):
    out = tmp_path / "out"
    code, stdout, err = cli(["study", EXAMPLES / example, "--dry-run", "--out", out], capsys)
    assert code == 0, err
    run_lines = [line for line in stdout.splitlines() if line.strip().startswith("run ")]
    assert len(run_lines) == runs
    assert f"{runs} unlearning run(s)" in stdout.splitlines()[0]
    assert not out.exists()  # nothing written
    if example == "tofu-phi.yaml":
        assert "locuslab/tofu_ft_phi-1.5" in stdout and "locuslab/TOFU" in stdout
        assert any("forget10-NPO+KL-beta0.5-seed42" in line and "lr 2e-05, batch 4x4" in line for line in run_lines)
        assert any(line.strip().startswith("run forget01-WTNPO-seed42: WTNPO (beta=4, power=1.5") for line in run_lines)


def test_demo_config_is_the_shipped_example_and_has_the_paper_methods(cli, capsys, no_network_no_models):
    from geffect.cli.demo import demo_config_text

    assert demo_config_text() == (EXAMPLES / "builtin-cpu.yaml").read_text(encoding="utf-8")
    code, stdout, _ = cli(["demo", "--dry-run", "--out", "unused"], capsys)
    assert code == 0
    runs = [line.split(":")[0].split()[-1] for line in stdout.splitlines() if line.strip().startswith("run ")]
    labels = {run.split("-")[1] for run in runs}
    # every claim of geffect.study.claims computable: GA, NPO, the reweighted three, and GA's KL and NLL regularisers
    assert labels >= {"GA", "GradDiff", "GA+KL", "NPO", "WGA", "TNPO", "WTNPO"}
    seeds = {run.split("-seed")[-1] for run in runs}
    assert len(seeds) >= 3 and len(runs) == len(labels) * len(seeds)
    assert "G-effects every 1 step(s)" in stdout and "points along each run: every" in stdout


def test_full_example_has_all_twelve_methods_and_three_seeds(cli, capsys, no_network_no_models):
    """The twelve methods of the paper's comparison, plus GA+KL so that claim 5 (KL against NLL) is computable."""
    code, stdout, _ = cli(["study", EXAMPLES / "builtin-full.yaml", "--dry-run", "--out", "unused"], capsys)
    assert code == 0
    runs = [line.split(":")[0].split()[-1] for line in stdout.splitlines() if line.strip().startswith("run ")]
    assert {run.split("-")[1] for run in runs} == {
        "GA",
        "GradDiff",
        "NPO",
        "NPO+KL",
        "IdkPO",
        "RMU",
        "SimNPO",
        "WGA",
        "TNPO",
        "WTNPO",
        "WGA+KL",
        "WTNPO+KL",
        "GA+KL",
    }
    assert len(runs) == 39 and {run.split("-seed")[-1] for run in runs} == {"0", "1", "2"}


def test_points_along_a_run_use_the_end_points_formulas_and_questions(monkeypatch, tmp_path):
    """A point scored under other rules than its run's end point would put two conventions on one path."""
    from geffect.evaluation.logs import EVAL_FILE
    from geffect.study import along

    options = along.StudyEval(
        every=2,
        points_ds_size=7,
        convention="openunlearning",
        question_key="paraphrased_question",
        reference_model="retain-model",
        mia_gradnorm=True,
    ).points()
    assert (options.ds_size, options.convention, options.question_key) == (7, "openunlearning", "paraphrased_question")
    assert options.reference_model is None and not options.mia_gradnorm  # the costly extras: end point only

    seen = {}

    def fake_evaluate(model, tokenizer, data, split, template, **kwargs):
        seen.update(kwargs)
        return {"geffect_meta": {}}

    monkeypatch.setattr("geffect.evaluation.evaluate", fake_evaluate)
    monkeypatch.setattr("geffect.evaluation.summarize", lambda results, reference: {})
    monkeypatch.setattr("geffect.evaluation.logs.load_eval_file", lambda path: None)
    job = along.PointsJob(2, "data", "forget05", "plain", "reference.json", options, str(tmp_path))
    import torch

    along.score_point(torch.nn.Linear(1, 1), None, job, tmp_path / "step-00002")
    assert seen["convention"] == "openunlearning" and seen["question_key"] == "paraphrased_question"
    assert seen["ds_size"] == 7 and (tmp_path / "step-00002" / EVAL_FILE).exists()
    assert seen["reference_model"] is None and not seen["gradnorm"]
