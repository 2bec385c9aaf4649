"""Each option is declared once (UnlearnConfig, TrackerConfig, FinetuneConfig, EvalConfig) and means the same
on the command line and in a study YAML; unknown keys are refused with one line naming them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import geffect.cli.main as cli_main
from geffect.effects.config import TrackerConfig
from geffect.evaluation.config import EvalConfig
from geffect.options import SECTION, add_arguments, fields, from_args
from geffect.study import parse_config, plan_study
from geffect.study.plan import unlearn_config
from geffect.training.config import UnlearnConfig
from geffect.training.finetune_config import FinetuneConfig

# A value other than the default for every field: a new option must be added here (and so, thought about).
SAMPLES = {
    UnlearnConfig: {
        "model": "org/target",
        "data": "org/data",
        "out": "runs/x",
        "forget": "forget05",
        "method": "NPO",
        "retain_loss": "KL",
        "preset": "openunlearning",
        "gamma": 0.5,
        "alpha": 2.0,
        "hparams": {"beta": 0.25},
        "kl_mask": "all",
        "refusals": "idk.jsonl",
        "alternates": "alt5_seed_0.json",
        "refusal_sampling": "per_visit",
        "update": "sam",
        "update_params": {"rho": 0.05},
        "lr": 3e-4,
        "epochs": 3,
        "batch_size": 2,
        "grad_accum": 8,
        "max_grad_norm": 1.5,
        "warmup_epochs": 0.5,
        "weight_decay": 0.01,
        "save_every": 7,
        "keep_checkpoints": 3,
        "max_steps": 11,
        "seed": 5,
        "template": "phi",
        "max_length": 256,
        "lora_r": 4,
        "lora_alpha": 16.0,
        "mixed_precision": "bf16",
        "dtype": "float64",
        "resume": True,
        "overwrite": True,
        "progress": False,
    },
    TrackerConfig: {
        "every": 3,
        "estimator": "ema",
        "instances": True,
        "scatter": True,
        "tokens": True,
        "tensors": True,
        "applied": True,
        "probe_size": 9,
        "probe_batch_size": 3,
        "activation_budget": 0.25,
    },
    FinetuneConfig: {
        "data": "org/data",
        "out": "models/x",
        "split": "retain90",
        "model": "org/base",
        "epochs": 2,
        "lr": 2e-4,
        "batch_size": 6,
        "warmup_ratio": 0.1,
        "weight_decay": 0.05,
        "max_length": 128,
        "precision": "bf16",
        "seed": 4,
        "max_steps": 9,
        "include_general": False,
        "template": "llama2",
        "overwrite": True,
        "eval_limit": 5,
        "eval_batch_size": 16,
        "model_overrides": {"hidden_size": 64},
        "progress": False,
    },
    EvalConfig: {
        "ds_size": 300,
        "batch_size": 8,
        "max_new_tokens": 20,
        "convention": "openunlearning",
        "reference_model": "org/retain",
        "question_key": "paraphrased_question",
        "mia_gradnorm": True,
    },
}
# Fields whose sample needs another field's sample to be valid (a rule's parameters need that rule).
COMPANIONS = {"update_params": {"update": "sam"}}
# Fields a study sets itself, from its own layout, rather than from a key of the user's YAML.
SET_BY_STUDY = {
    UnlearnConfig: {"out", "resume", "overwrite", "progress"},
    FinetuneConfig: {"data", "out", "split", "model", "template", "overwrite", "progress"},
    TrackerConfig: set(),
    EvalConfig: set(),
}
SECTIONS = {UnlearnConfig: "training", TrackerConfig: "geffect", FinetuneConfig: "model.finetune", EvalConfig: "eval"}


def _argv(parser: argparse.ArgumentParser, name: str, value) -> list[str]:
    (action,) = [a for a in parser._actions if a.dest == name]
    flag = action.option_strings[0]
    if isinstance(value, bool):
        return [flag]  # the flag switches the default
    if isinstance(value, dict):
        return [x for key, v in value.items() for x in (flag, f"{key}={v}")]
    return [flag, str(value)]


def _required(cls) -> dict:
    return {f.name: SAMPLES[cls][f.name] for f in fields(cls) if not dataclasses.is_dataclass(f.default) and
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}  # fmt: skip


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_every_field_has_a_sample_and_a_flag(cls):
    assert set(SAMPLES[cls]) == {f.name for f in fields(cls)}
    for f in fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert SAMPLES[cls][f.name] != (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        )
    assert {f.name for f in fields(cls) if f.metadata["study"] != SECTION} - SET_BY_STUDY[cls] <= {
        "model",
        "data",
        "forget",
        "method",
        "retain_loss",
        "gamma",
        "alpha",
        "hparams",
        "seed",
        "template",
        "dtype",
    }


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_field_on_the_command_line(cls):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, cls)
    required = [x for name, value in _required(cls).items() for x in _argv(parser, name, value)]
    if cls is UnlearnConfig:
        required += ["--method", "GA"]
    for f in fields(cls):
        value = SAMPLES[cls][f.name]
        args = parser.parse_args(required + _argv(parser, f.name, value))
        assert getattr(from_args(cls, args), f.name) == value, f.name


def _study(**changes) -> dict:
    base = {"name": "t", "benchmark": {"source": "org/data"}, "model": {"target": "org/target"},
            "methods": ["GA"], "forget_splits": ["forget10"], "seeds": [0]}  # fmt: skip
    base.update(changes)
    return base


def _planned_unlearn_config(study: dict) -> UnlearnConfig:
    config = parse_config(study)
    plan = plan_study(config)
    (run,) = plan.runs
    options = unlearn_config(config, run, model=plan.target.source, data=config.benchmark.source, out="out")
    options.template = config.template or options.template
    return options


STUDY_KEYS = {  # the study key that gives a non-section UnlearnConfig field
    "model": lambda v: {"model": {"target": v}},
    "data": lambda v: {"benchmark": {"source": v}},
    "forget": lambda v: {"forget_splits": [v]},
    "method": lambda v: {"methods": [v]},
    "retain_loss": lambda v: {"methods": [{"method": "NPO", "retain_loss": v}]},
    "gamma": lambda v: {"methods": [{"method": "GA", "params": {"gamma": v}}]},
    "alpha": lambda v: {"methods": [{"method": "GA", "params": {"alpha": v}}]},
    "hparams": lambda v: {"methods": [{"method": "NPO", "params": v}]},
    "seed": lambda v: {"seeds": [v]},
    "template": lambda v: {"template": v},
    "dtype": lambda v: {"model": {"target": "org/target", "dtype": v}},
}


@pytest.mark.parametrize("name", [f.name for f in fields(UnlearnConfig) if f.name not in SET_BY_STUDY[UnlearnConfig]])
def test_each_unlearn_option_in_a_study(name):
    value = SAMPLES[UnlearnConfig][name]
    field = {f.name: f for f in fields(UnlearnConfig)}[name]
    if field.metadata["study"] == SECTION:
        study = _study(training={name: value, **COMPANIONS.get(name, {})})
        assert getattr(_planned_unlearn_config(study), name) == value
        method_level = _study(methods=[{"method": "GA", "training": {name: value, **COMPANIONS.get(name, {})}}])
        assert getattr(_planned_unlearn_config(method_level), name) == value
    else:
        assert getattr(_planned_unlearn_config(_study(**STUDY_KEYS[name](value))), name) == value


@pytest.mark.parametrize("name", [f.name for f in fields(TrackerConfig)])
def test_each_tracker_option_in_a_study(name):
    value = SAMPLES[TrackerConfig][name]
    tracking = parse_config(_study(geffect={name: value})).geffect
    assert tracking.enabled and getattr(tracking.tracker, name) == value
    assert getattr(TrackerConfig(**{name: value}), name) == value


@pytest.mark.parametrize("name", [f.name for f in fields(EvalConfig)])
def test_each_eval_option_in_a_study(name):
    value = SAMPLES[EvalConfig][name]
    assert getattr(parse_config(_study(eval={name: value})).eval, name) == value


@pytest.mark.parametrize("name", [f.name for f in fields(FinetuneConfig) if f.name not in SET_BY_STUDY[FinetuneConfig]])
def test_each_finetune_option_in_a_study(name):
    value = SAMPLES[FinetuneConfig][name]
    config = parse_config(_study(model={"base": "tiny", "finetune": {name: value}}))
    # what the study's fine-tuning stage builds (geffect.study.stages.finetune_model)
    built = FinetuneConfig(data="d", split="full", model="tiny", out="o", **config.model.finetune)
    assert getattr(built, name) == value


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_an_unknown_key_is_refused_naming_it(cls, capsys):
    section = SECTIONS[cls]
    study = _study(model={"base": "tiny"})
    outer, _, inner = section.partition(".")
    if inner:
        study[outer] = {**study[outer], inner: {"no_such_option": 1}}
    else:
        study[outer] = {"no_such_option": 1}
    with pytest.raises(Exception) as caught:
        parse_config(study)
    message = str(caught.value)
    assert message.startswith(f"{section}.no_such_option: unknown key") and "\n" not in message


@pytest.mark.parametrize(
    "command",
    [
        ["unlearn", "--model", "m", "--data", "d", "--out", "o", "--method", "GA"],
        ["finetune", "--data", "d", "--out", "o"],
        ["eval"],
    ],
)
def test_an_unknown_flag_is_refused_naming_it(command, capsys):
    with pytest.raises(SystemExit) as caught:
        cli_main.main([*command, "--no-such-option=1"])
    err = capsys.readouterr().err.strip()
    assert caught.value.code == 2 and len(err.splitlines()) == 1 and "--no-such-option" in err, err


def test_a_checked_value_fails_the_same_way_on_both_sides(capsys):
    assert cli_main.main(["unlearn", "--model", "m", "--data", "d", "--out", "o", "--method", "GA", "--lr", "-1"]) == 2
    cli_error = capsys.readouterr().err.strip()
    with pytest.raises(Exception) as caught:
        parse_config(_study(training={"lr": -1.0}))
    assert cli_error == "geffect: error: --lr must be a positive number, got -1.0"
    assert str(caught.value) == "training: --lr must be a positive number, got -1.0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--data", "d", "--out", "OUT", "--model-override", "hidden_size"], "is not KEY=VALUE"),
        (["finetune", "--data", "d", "--out", "OUT", "--model-override", "hidden_size=[1"], "is not a YAML value"),
        (["finetune", "--data", "d", "--out", "OUT", "--warmup-ratio", "-0.5"], "--warmup-ratio must be >= 0"),
        (["finetune", "--data", "d", "--out", "OUT", "--precision", "fp16"], "unknown --precision 'fp16'"),
        (["unlearn", "--model", "m", "--data", "d", "--out", "OUT", "--method", "GA", "--track-geffect",
          "--geffect-probe-batch-size", "0"], "--geffect-probe-batch-size must be >= 1"),
        (["unlearn", "--model", "m", "--data", "d", "--out", "OUT", "--method", "GA", "--track-geffect",
          "--geffect-estimator", "exact"], "unknown --geffect-estimator 'exact'"),
        (["eval", "--model", "m", "--data", "d", "--out", "OUT", "--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)  # fmt: skip
def test_a_bad_derived_option_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main.main([str(out) if a == "OUT" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
