"""Acceptance on the built-in benchmark's tiny models (session fixtures of tests/conftest.py).

The retain model scored against its own evaluation has forget quality 1; the target model (trained on the
forget set too) scored against the retain model's evaluation has forget quality below 0.05 and a positive
model utility.
"""

from __future__ import annotations

import os

import pytest

from geffect.evaluation import evaluate, summarize
from geffect.models.loading import load_model_and_tokenizer

FORGET_SPLIT = "forget10"  # the retain model is trained on retain90
TEMPLATE = "plain"  # the tiny preset's fine-tuning template
MAX_NEW_TOKENS = 48  # the benchmark's answers are short sentences
DS_SIZE = 40  # first 40 items of each set: enough for the KS test, keeps the test quick


def _path(fixture) -> str:
    if isinstance(fixture, (str, os.PathLike)):
        return str(fixture)
    for attribute in ("out", "path", "folder"):
        if hasattr(fixture, attribute):
            return str(getattr(fixture, attribute))
    raise TypeError(f"cannot find a folder in fixture {fixture!r}")


def _evaluate(model_fixture, data_fixture, retain_logs=None) -> dict:
    if isinstance(model_fixture, tuple):
        model, tokenizer = model_fixture
    else:
        model, tokenizer = load_model_and_tokenizer(_path(model_fixture))
    return evaluate(
        model,
        tokenizer,
        _path(data_fixture),
        FORGET_SPLIT,
        TEMPLATE,
        retain_logs=retain_logs,
        ds_size=DS_SIZE,
        batch_size=64,
        max_new_tokens=MAX_NEW_TOKENS,
    )


@pytest.fixture(scope="module")
def retain_eval(tiny_benchmark, tiny_retain_model):
    return _evaluate(tiny_retain_model, tiny_benchmark)


def test_retain_model_against_its_own_log(retain_eval):
    summary = summarize(retain_eval, retain_eval)
    assert summary["forget_quality"] == 1.0
    assert summary["forget_quality_ks_statistic"] == 0.0
    assert summary["privleak"] == 0.0


def test_target_model_against_the_retain_log(tiny_benchmark, tiny_target_model, retain_eval):
    target = _evaluate(tiny_target_model, tiny_benchmark, retain_logs=retain_eval)
    summary = summarize(target, retain_eval)
    assert summary["forget_quality"] == target["forget_quality"]["agg_value"]
    assert summary["forget_quality"] < 0.05
    assert summary["model_utility"] > 0
    # The target model has seen the forget set: it is a better member-detector there than the retain model.
    assert summary["mia_loss"] > retain_eval["mia_loss"]["agg_value"]
