"""Acceptance 4: two CPU processes (accelerate launch, gloo) log the same per-step numbers as one process
with the same global batch, within 1e-5; the data order does not depend on the number of processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from geffect.io import read_jsonl
from geffect.training.batches import StepSampler
from geffect.training.unlearn import unlearn
from test_training_support import config, final_weights, tiny_paths

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("loss", "forget_loss", "retain_loss", "forget_risk", "retain_risk", "mean_token_weight", "lr", "grad_norm")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    one = StepSampler(n_forget=23, n_retain=7, batch_size=2, grad_accum=4, world_size=1, seed=3)
    two = StepSampler(n_forget=23, n_retain=7, batch_size=2, grad_accum=2, world_size=2, seed=3)
    four = StepSampler(n_forget=23, n_retain=7, batch_size=2, grad_accum=1, world_size=4, seed=3)
    assert one.steps_per_epoch == two.steps_per_epoch == four.steps_per_epoch == 3
    for step in range(6):

        def chunks(sampler):
            per_rank = [sampler.micro_batches(step, rank) for rank in range(sampler.world_size)]
            return sorted((tuple(m.forget.tolist()), tuple(m.retain.tolist())) for batches in per_rank for m in batches)

        assert chunks(one) == chunks(two) == chunks(four)
    # Every forget item is seen in every epoch; epochs are shuffled differently.
    epoch0, _ = one.epoch_order(0)
    epoch1, _ = one.epoch_order(1)
    assert set(epoch0.tolist()) == set(range(23)) and not np.array_equal(epoch0, epoch1)


def test_two_processes_match_one_process(tmp_path_factory, tmp_path):
    data, model = tiny_paths(tmp_path_factory)
    method = "TNPO+KL"  # reference model, token weights and a retain loss: every logged quantity
    single = unlearn(config(data, model, tmp_path / "one", method=method, batch_size=2, grad_accum=2))

    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "examples" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "geffect.cli.unlearn",
        "--model", model, "--data", data, "--method", method, "--lr", "1e-3", "--epochs", "1",
        "--batch-size", "2", "--grad-accum", "1", "--warmup-epochs", "0.5", "--no-progress",
        "--out", str(tmp_path / "two"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    one_log, two_log = read_jsonl(tmp_path / "one" / "log.jsonl"), read_jsonl(tmp_path / "two" / "log.jsonl")
    assert len(one_log) == len(two_log) == single.steps == 5
    for a, b in zip(one_log, two_log):
        assert a["step"] == b["step"]
        for key in COMPARED:
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    # The two runs took the same steps: the final weights agree to float32 round-off.
    one_weights, two_weights = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for name, value in one_weights.items():
        assert (value - two_weights[name]).abs().max() <= 1e-4, name
