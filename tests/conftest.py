"""Session fixtures shared by the test suite: a small built-in benchmark and tiny models fine-tuned on it.

All are built once per test session, deterministically (same seed, same bytes/weights), on CPU, in a few
seconds each. Tests must not modify the folders they get.

Also the markers needs_tofu, needs_tofu_logs and needs_chromium: where those prerequisites are looked for, and
the skip (or, with CI set, failure) when they are missing, are in tests/prerequisites.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prerequisites import MARKERS, in_ci, missing_reasons

FIXTURE_AUTHORS = 20  # 400 QA in full; forget10 = the last 2 authors (40 QA), retain90 = the other 360
FIXTURE_SEED = 0
# Small enough to train in seconds on two cores, large enough to memorise a good part of 20 authors.
FIXTURE_MODEL = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4}
FIXTURE_TRAINING = {"epochs": 16, "lr": 5e-3, "batch_size": 16, "seed": FIXTURE_SEED, "eval_limit": 0}

_MISSING = pytest.StashKey[str]()


def pytest_configure(config):
    for name, (description, _) in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}; skipped when missing, failed when CI is set")


def pytest_collection_modifyitems(config, items):
    """Tests marked needs_tofu / needs_tofu_logs / needs_chromium (see tests/prerequisites.py) whose prerequisite
    is missing are skipped with the reason, or, when the environment variable CI is non-empty, fail with it."""
    for item in items:
        reasons = missing_reasons(item)
        if not reasons:
            continue
        if in_ci():
            item.stash[_MISSING] = "; ".join(reasons) + " (CI is set, so this fails instead of skipping)"
        else:
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _MISSING in item.stash:
        pytest.fail(item.stash[_MISSING], pytrace=False)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """Folder of the built-in benchmark with 20 authors (seed 0), written by `geffect.data.synth.write_benchmark`.

    Holds every TOFU split file (full 400 QA, forget01/05/10, retain99/95/90, *_perturbed, holdout*,
    real_authors*, world_facts*) plus general.json.
    """
    from geffect.data.synth import write_benchmark

    folder = tmp_path_factory.mktemp("benchmark") / f"synth{FIXTURE_AUTHORS}"
    write_benchmark(folder, n_authors=FIXTURE_AUTHORS, seed=FIXTURE_SEED)
    return folder


def _finetuned(data: Path, split: str, tmp_path_factory) -> Path:
    from geffect.training.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("models") / split
    finetune(
        FinetuneConfig(
            data=str(data),
            split=split,
            model="tiny",
            out=str(out),
            model_overrides=FIXTURE_MODEL,
            progress=False,
            **FIXTURE_TRAINING,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_target_model(tiny_benchmark, tmp_path_factory) -> Path:
    """save_pretrained folder (safetensors model + tokenizer + finetune.json) of a tiny Llama trained from
    scratch on split `full` + general.json of `tiny_benchmark` (template `plain`, seed 0).

    Guarantees: loads with AutoModelForCausalLM / AutoTokenizer (or geffect.models.loading); shares its
    tokenizer byte for byte with `tiny_retain_model`; has learned the data: the mean training loss of its last
    20 steps is below 40% of its first step's loss (checked in tests/test_finetune.py). It is NOT trained to
    exact-match accuracy (a few hundred steps of a 128-wide, 2-layer model; ~10 s on an idle 2-core CPU).
    """
    return _finetuned(tiny_benchmark, "full", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_retain_model(tiny_benchmark, tmp_path_factory) -> Path:
    """Like `tiny_target_model`, but trained on split `retain90` + general.json: the retain model for
    forget10 (it has never seen the last 2 authors)."""
    return _finetuned(tiny_benchmark, "retain90", tmp_path_factory)


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `geffect ...` through the real entry point with the eval command registered; (code, stdout, stderr).
    (test_study_config.py has its own `cli` for its commands.)"""
    from geffect.cli import main as main_module

    monkeypatch.setattr(main_module, "COMMAND_MODULES", ("eval",))

    def run(*argv):
        code = main_module.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
