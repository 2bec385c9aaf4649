"""The lines a run prints before its first step: the lr schedule (checked against the scheduler itself) and
the size of its checkpoints."""

from __future__ import annotations

import pytest
import torch

from geffect.training.schedule import build_scheduler
from geffect.training.start_notes import checkpoint_bytes, describe_checkpoints, describe_schedule, step_lrs


@pytest.mark.parametrize("warmup,total", [(3, 3), (0, 5), (2, 7), (1, 1)])
def test_step_lrs_are_the_schedulers(warmup, total):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-5)
    scheduler = build_scheduler(optimizer, warmup, total)
    expected = []
    for _ in range(total):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert step_lrs(1e-5, warmup, total) == pytest.approx(expected, rel=1e-12, abs=1e-20)


def test_schedule_line_warns_when_the_warmup_spans_the_run():
    line = describe_schedule(1e-5, warmup_steps=3, total_steps=3, steps_per_epoch=3)
    assert "3 optimizer steps (1 epochs of 3)" in line and "per step: 0, 3.33e-06, 6.67e-06" in line
    assert "peak is never used" in line
    assert "never used" not in describe_schedule(1e-5, 1, 10, 10)


def test_checkpoint_size_counts_tied_weights_once_and_adam_moments_of_trainable_ones():
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied
    frozen = torch.nn.Linear(4, 4, bias=False).requires_grad_(False)
    model = torch.nn.ModuleList([embed, head, frozen])
    # the tied pair once, weights and two AdamW moments; the frozen layer is left out of checkpoints
    assert checkpoint_bytes(model) == 40 * 4 + 2 * 40 * 4
    line = describe_checkpoints(model, save_every=2, keep=1, total_steps=6)
    assert "3 in all" in line and "newest 1 kept" in line
    assert describe_checkpoints(model, save_every=0, keep=1, total_steps=6) is None


def test_progress_lines_when_not_a_terminal(monkeypatch):
    import io

    from geffect import progress as module

    clock = iter(range(0, 1000, 20))  # each item takes 20 s
    monkeypatch.setattr(module.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    assert list(module.progress(range(4), "scoring", every_s=30, stream=stream)) == [0, 1, 2, 3]
    assert stream.getvalue().splitlines() == [
        "scoring: 2/4 (50%), 40 s, about 40 s left",
        "scoring: 4/4 (100%), 80 s, about 0 s left",
    ]
    quiet = io.StringIO()
    list(module.progress(range(3), "fast", every_s=1e9, stream=quiet))
    assert quiet.getvalue() == ""
    assert list(module.progress([1, 2], "off", enabled=False)) == [1, 2]
