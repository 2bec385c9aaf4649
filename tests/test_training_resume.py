"""Acceptance 3: a run interrupted after checkpoint k and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.training.checkpoint import list_checkpoints
from geffect.training.unlearn import unlearn
from test_training_support import config, tiny_paths


class Crash(RuntimeError):
    pass


class CrashAt:
    """Raises inside the step `step` (after its backward, before its update), like a killed process."""

    retain_graph = False

    def __init__(self, step: int):
        self.step = step

    def on_train_begin(self, run):
        pass

    def after_backward(self, run, step):
        if step.step == self.step:
            raise Crash(f"crash in step {step.step}")

    def on_train_end(self, run):
        pass


@pytest.mark.parametrize("method, extra", [("NPO+KL", {}), ("RMU", {"lora_r": 2})])
def test_resume_is_identical_to_an_uninterrupted_run(tmp_path_factory, tmp_path, method, extra):
    data, model = tiny_paths(tmp_path_factory)
    # 20 forget items, global batch 4: 5 steps per epoch, 10 steps; checkpoints at 3, 6, 9.
    options = dict(method=method, epochs=2, save_every=3, keep_checkpoints=2, **extra)
    full = unlearn(config(data, model, tmp_path / "full", **options))

    with pytest.raises(Crash):
        unlearn(config(data, model, tmp_path / "cut", **options), callbacks=[CrashAt(8)])
    assert [step for step, _ in list_checkpoints(tmp_path / "cut")] == [3, 6]
    assert len(read_jsonl(tmp_path / "cut" / "log.jsonl")) == 7
    with pytest.raises(UsageError, match="already exists"):
        unlearn(config(data, model, tmp_path / "cut", **options))
    with pytest.raises(UsageError, match="lr"):
        unlearn(config(data, model, tmp_path / "cut", resume=True, **{**options, "lr": 2e-3}))

    resumed = unlearn(config(data, model, tmp_path / "cut", resume=True, **options))
    assert resumed.summary["resumed_from_step"] == 6
    full_params = dict(full.model.named_parameters())
    resumed_params = dict(resumed.model.named_parameters())
    assert full_params.keys() == resumed_params.keys()
    for name, value in full_params.items():
        assert torch.equal(value, resumed_params[name]), name
    # The resumed log continues the checkpoint's log: the same 10 lines, the same numbers.
    assert read_jsonl(tmp_path / "cut" / "log.jsonl") == read_jsonl(tmp_path / "full" / "log.jsonl")
    # ... and the run really changed the model (a test that cannot fail is no test).
    assert full.last_log["forget_risk"] != read_jsonl(tmp_path / "full" / "log.jsonl")[0]["forget_risk"]


def test_resume_without_checkpoint_starts_afresh_and_finished_run_is_refused(tmp_path_factory, tmp_path):
    data, model = tiny_paths(tmp_path_factory)
    with pytest.raises(Crash):
        unlearn(config(data, model, tmp_path / "run", method="GA"), callbacks=[CrashAt(2)])
    result = unlearn(config(data, model, tmp_path / "run", method="GA", resume=True))
    assert result.summary["resumed_from_step"] == 0
    steps = [record["step"] for record in read_jsonl(tmp_path / "run" / "log.jsonl")]
    assert steps == list(range(1, result.steps + 1))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["steps"] == result.steps
    with pytest.raises(UsageError, match="already finished"):
        unlearn(config(data, model, tmp_path / "run", method="GA", resume=True))
