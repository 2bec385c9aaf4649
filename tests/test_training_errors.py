"""Acceptance 6 (bad input: one line, exit 2, nothing written) and the NaN stop (exit 1, last checkpoint intact)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import geffect.training.unlearn as loop
from geffect.cli.unlearn import main
from geffect.io import read_jsonl
from geffect.training.checkpoint import list_checkpoints
from test_training_support import tiny_paths


def _args(data, model, out, *extra):
    return ["--model", model, "--data", data, "--out", str(out), "--lr", "1e-3", "--epochs", "1",
            "--batch-size", "2", "--grad-accum", "2", "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("unknown method", ["--method", "Forgetful"], "unknown unlearning method"),
        ("invalid beta", ["--method", "NPO", "--beta", "-1"], "beta"),
        ("hparam of another method", ["--method", "GA", "--hparam", "beta=2"], "unknown hyper-parameter"),
        ("unknown forget split", ["--method", "GA", "--forget", "forget07"], "forget07"),
        ("missing split file", ["--method", "GA", "--data", "DATA_WITHOUT_FORGET10"], "forget10"),
        ("missing model folder", ["--method", "GA", "--model", "MISSING_MODEL"], "does not exist"),
        ("existing run", ["--method", "GA", "--out", "EXISTING_RUN"], "already exists"),
        ("bad batch size", ["--method", "GA", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path_factory, tmp_path, capsys, case, extra, message):
    data, model = tiny_paths(tmp_path_factory)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(f"{data}/retain90.json", partial / "retain90.json")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "log.jsonl").write_text("{}\n")
    replace = {
        "DATA_WITHOUT_FORGET10": str(partial),
        "MISSING_MODEL": str(tmp_path / "no-model"),
        "EXISTING_RUN": str(existing),
    }
    extra = [replace.get(item, item) for item in extra]
    out = tmp_path / "run"
    capsys.readouterr()  # drop what building the tiny model printed

    code = main(_args(data, model, out, *extra))  # later flags override the defaults given first

    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("geffect: error:") and message in err, err
    assert not out.exists()
    assert (existing / "log.jsonl").read_text() == "{}\n"


class _NanAfter:
    """Wraps an objective; its loss turns NaN from the `calls`-th call on (a diverging run)."""

    def __init__(self, objective, calls: int):
        self._objective, self._calls, self._seen = objective, calls, 0

    def __getattr__(self, name):
        return getattr(self._objective, name)

    def __call__(self, model, batch, ref_model=None):
        out = self._objective(model, batch, ref_model)
        self._seen += 1
        if self._seen >= self._calls:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_with_message_and_intact_checkpoint(tmp_path_factory, tmp_path, capsys, monkeypatch):
    data, model = tiny_paths(tmp_path_factory)
    build = loop.build_objective
    # Two micro-batches per step: call 5 is the first micro-batch of step 3.
    monkeypatch.setattr(loop, "build_objective", lambda cfg: _NanAfter(build(cfg), calls=5))
    out = tmp_path / "run"

    code = main(_args(data, model, out, "--method", "NPO+KL", "--save-every", "1"))

    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geffect:")]
    assert code == 1
    assert len(err) == 1 and "loss is nan at optimizer step 3" in err[0] and "step-00000002" in err[0], err
    assert [step for step, _ in list_checkpoints(out)] == [2]
    assert [record["step"] for record in read_jsonl(out / "log.jsonl")] == [1, 2]
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    checkpoint = list_checkpoints(out)[0][1]
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2
    assert not any(path.name.startswith(".tmp") for path in (out / "checkpoints").iterdir())
    # The run can go on from there (e.g. after the cause is fixed): the checkpoint is complete.
    monkeypatch.setattr(loop, "build_objective", build)
    assert main(_args(data, model, out, "--method", "NPO+KL", "--save-every", "1", "--resume")) == 0
    log = read_jsonl(out / "log.jsonl")
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5] and all(math.isfinite(r["loss"]) for r in log)


@pytest.mark.parametrize("save_every", [0, 1])
def test_float16_run_that_diverges_on_its_last_update_saves_nothing(tmp_path_factory, tmp_path, capsys, save_every):
    """AdamW on float16 weights overflows them in one step while the loss and gradient of that step are
    finite: the guard on the weights (before any checkpoint and before the final save) stops the run."""
    data, model = tiny_paths(tmp_path_factory)
    out = tmp_path / "run"
    capsys.readouterr()
    argv = _args(data, model, out, "--method", "GA", "--dtype", "float16", "--max-steps", "1")
    code = main([*argv, "--save-every", str(save_every)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geffect:")]
    assert code == 1
    assert len(err) == 1 and "weights are not finite after optimizer step 1" in err[0], err
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    assert list_checkpoints(out) == []
    assert [record["step"] for record in read_jsonl(out / "log.jsonl")] == [1]  # the step ran; nothing kept


def test_the_summary_flags_a_collapse_to_uniform_and_names_the_method_as_given():
    from geffect.training.guards import learning_rate, loss_warnings, method_label, range_warnings

    vocab = 300
    uniform = math.log(vocab)  # the risk of a model that predicts every token with probability 1/300
    collapsed = {
        "forget_risk_first": 2.0,
        "forget_risk_last": uniform,
        "retain_risk_first": 1.5,
        "retain_risk_last": 7.0,
    }
    found = range_warnings(collapsed, vocab)
    assert len(found) == 2 and "forget risk ended at 5.704" in found[0] and "retain risk ended at 7" in found[1]
    assert loss_warnings(2.0, 7.0, vocab) and loss_warnings(5.7, 412.0, vocab) and not loss_warnings(6.0, 5.9, vocab)
    assert not loss_warnings(5.7, 1.0, vocab)
    unlearned = {**collapsed, "forget_risk_last": 15.0, "retain_risk_last": 1.6}  # far above log V: GA's usual
    assert range_warnings(unlearned, vocab) == []
    untrained = {**collapsed, "forget_risk_first": uniform + 0.01, "retain_risk_first": uniform}  # started there
    assert range_warnings(untrained, vocab) == []
    assert range_warnings({**unlearned, "forget_risk_last": math.nan}, vocab) == ["the last forget risk is nan"]

    assert method_label("NPO", "KL", "none") == "NPO+KL"
    assert method_label("NPO", "none", "none") == method_label("NPO", None, "none") == "NPO"
    assert method_label("GradDiff", "NLL", "NLL") == "GradDiff"
    assert [learning_rate(v) is None for v in (1e-5, 10.0, 10.5, 3.4e38, math.inf, math.nan, 0.0)] == [
        True, True, False, False, False, False, False,
    ]  # fmt: skip
