"""Acceptance 3: a run interrupted after checkpoint k and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from geffect.effects.posthoc import expand_checkpoints, load_checkpoint_model
from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.training.checkpoint import WEIGHTS_RECORD, _check_left_out_are_frozen, _frozen_names, list_checkpoints
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
    if extra.get("lora_r"):
        # A LoRA checkpoint holds the adapters only: the frozen base model is the run's --model.
        folder = list_checkpoints(tmp_path / "cut")[-1][1]
        with safe_open(str(folder / "model.safetensors"), framework="pt") as saved:
            keys = list(saved.keys())
        assert keys and all("lora_" in key for key in keys)
        assert json.loads((folder / WEIGHTS_RECORD).read_text())["frozen_left_out"]
        # ... and post-hoc G-effects rebuild the model from it: the run's base plus the trained adapters
        rebuilt = dict(load_checkpoint_model(expand_checkpoints([str(folder)])[0]).named_parameters())
        base = dict(AutoModelForCausalLM.from_pretrained(model).named_parameters())
        assert rebuilt.keys() == base.keys()
        assert any(not torch.equal(rebuilt[name], base[name]) for name in base)
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


def test_a_checkpoint_without_frozen_weights_loads_only_what_it_lacks_by_design(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    accelerator = type("Accelerator", (), {"_models": [model]})()
    trained = {k: v for k, v in model.state_dict().items() if k.startswith("1.")}
    save_file(trained, str(tmp_path / "model.safetensors"))
    _check_left_out_are_frozen(accelerator, tmp_path, ["0.weight", "0.bias"])  # what the saver leaves out
    with pytest.raises(KeyError, match="trained in this run: 1.bias"):
        _check_left_out_are_frozen(accelerator, tmp_path, ["0.weight", "0.bias", "1.bias"])
    save_file({"1.weight": trained["1.weight"]}, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="lacks weight 1.bias"):
        _check_left_out_are_frozen(accelerator, tmp_path, ["0.weight", "0.bias"])
    # a tied, frozen lm_head is left out under both of its state-dict names
    tied = torch.nn.ModuleDict({"embed": torch.nn.Embedding(3, 2), "head": torch.nn.Linear(2, 3, bias=False)})
    tied["head"].weight = tied["embed"].weight
    assert _frozen_names(tied.requires_grad_(False)) == {"embed.weight", "head.weight"}


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


# --- interruptions of a real process (issue #15, acceptance 2 and 4) ------------------------------------------
# The kills are placed with geffect.faults (GEFFECT_FAULT=POINT[@STEP][:SIGNAL]): the process signals itself at
# that point, so "during the final save" is hit exactly, without sleeping.

INTERRUPTED = dict(method="NPO", epochs=2, max_steps=4, save_every=2, keep_checkpoints=0)


def _argv(data: str, model: str, out, **options) -> list[str]:
    argv = ["unlearn", "--model", model, "--data", data, "--out", str(out), "--no-progress"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _start(argv: list[str], fault: str, cwd):
    import subprocess
    import sys

    env = {**os.environ, "GEFFECT_FAULT": fault}
    return subprocess.Popen(
        [sys.executable, "-m", "geffect", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    data, model = tiny_paths(tmp_path_factory)
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    unlearn(config(data, model, out, **INTERRUPTED))
    return out


def _assert_identical(run, reference) -> None:
    for name in ("log.jsonl", "model/model.safetensors"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name


def _resume(data, model, out):
    import geffect.cli.main as cli_main

    assert cli_main.main([*_argv(data, model, out, **_cli_options()), "--resume"]) == 0


def _cli_options() -> dict:
    # the options of support.config() that differ from the CLI defaults, plus INTERRUPTED
    return dict(lr=1e-3, batch_size=2, grad_accum=2, warmup_epochs=0.5, **INTERRUPTED)


def test_a_second_run_is_refused_and_a_kill_during_the_final_save_resumes_identically(
    tmp_path_factory, tmp_path, uninterrupted, capsys, caplog
):
    """Run A stops itself (SIGSTOP) inside its final save, holding the lock: run B into the same folder exits
    2 naming A's pid; then A is killed (SIGKILL) there and the resumed run equals an uninterrupted one."""
    import signal

    import geffect.cli.main as cli_main

    data, model = tiny_paths(tmp_path_factory)
    out = tmp_path / "run"
    first = _start(_argv(data, model, out, **_cli_options()), "final-save:SIGSTOP", tmp_path)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once A has stopped itself
        assert os.WIFSTOPPED(status), first.stderr.read().decode()
        capsys.readouterr()
        assert cli_main.main(_argv(data, model, out, **_cli_options())) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("geffect: error:") and len(err.splitlines()) == 1, err
        assert f"in use by process {first.pid} " in err and ".geffect.lock" in err, err
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.communicate()
    assert not (out / "summary.json").exists() and not (out / "model").exists()
    with caplog.at_level("WARNING"):
        _resume(data, model, out)
    assert "took over the stale lock" in caplog.text
    _assert_identical(out, uninterrupted)


@pytest.mark.parametrize("fault, code", [("checkpoint-write@4", -9), ("checkpoint-write@4:SIGTERM", 143)])
def test_a_kill_during_a_checkpoint_write_resumes_identically(tmp_path_factory, tmp_path, uninterrupted, fault, code):
    data, model = tiny_paths(tmp_path_factory)
    out = tmp_path / "run"
    argv = _argv(data, model, out, **_cli_options())
    process = _start(argv, fault, tmp_path)
    _, err = process.communicate()
    err = err.decode()
    assert process.returncode == code, err
    assert [step for step, _ in list_checkpoints(out)] == [2]  # the interrupted checkpoint 4 never counted
    if code == 143:  # SIGTERM: one line saying how to continue; the lock is released
        lines = [line for line in err.splitlines() if line.startswith("geffect:")]
        assert len(lines) == 1 and "interrupted (SIGTERM); continue with: geffect unlearn" in lines[0], err
        assert lines[0].split("continue with: geffect ")[1].split(" (from")[0].split() == [*argv, "--resume"]
        assert "Traceback" not in err and not (out / ".geffect.lock").exists()
    _resume(data, model, out)
    _assert_identical(out, uninterrupted)


def test_ctrl_c_prints_the_resume_command(tmp_path_factory, tmp_path, capsys, monkeypatch):
    import geffect.cli.main as cli_main
    import geffect.cli.unlearn as cli_unlearn

    class CtrlC(CrashAt):
        def after_backward(self, run, step):
            raise KeyboardInterrupt

    data, model = tiny_paths(tmp_path_factory)
    monkeypatch.setattr(cli_unlearn, "build_callbacks", lambda args: [CtrlC(1)])
    argv = _argv(data, model, tmp_path / "run", method="GA", max_steps=2)
    capsys.readouterr()
    assert cli_main.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("geffect: interrupted (Ctrl-C); continue with: geffect unlearn --model")
    assert err.splitlines()[-1].endswith("--resume (from its last checkpoint, see --save-every)")
    assert not (tmp_path / "run" / ".geffect.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    from geffect.runlock import LOCK_NAME, RunLock

    (tmp_path / LOCK_NAME).write_text("4194999 on a-machine-that-rebooted")
    with caplog.at_level("WARNING"), RunLock(tmp_path) as lock:
        assert "took over the stale lock" in caplog.text and "4194999" in caplog.text
        with pytest.raises(UsageError, match=f"in use by process {os.getpid()} "):
            RunLock(tmp_path).acquire()  # a second holder, even in this process, is refused
        assert lock.path.read_text().startswith(f"{os.getpid()} on ")
    assert not (tmp_path / LOCK_NAME).exists()
