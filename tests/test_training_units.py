"""The loop's parts against independent computations: the callback contract (full, unclipped gradients,
graph kept alive), logged step numbers, the schedule, RNG checkpoints, option parsing."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from geffect.data.collate import pad_token_id
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.models.loading import load_tokenizer
from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.training.batches import BatchBuilder, StepSampler, encode_records
from geffect.training.checkpoint import _load_rng, _save_rng
from geffect.training.schedule import build_scheduler, warmup_steps_for
from geffect.training.step_stats import StepStats
from geffect.training.unlearn import unlearn
from test_training_support import config, tiny_paths


class GradientCheck:
    """At every step, recomputes the step's gradient independently and compares it with p.grad."""

    retain_graph = True

    def __init__(self, data: str, model_dir: str, batch_size: int, grad_accum: int, seed: int):
        tokenizer = load_tokenizer(model_dir)
        encode = dict(tokenizer=tokenizer, template=get_template("plain"), max_length=512)
        self.builder = BatchBuilder(
            encode_records(records=load_split(data, "forget10"), **encode),
            encode_records(records=load_split(data, "retain90"), **encode),
            pad_token_id(tokenizer),
            torch.device("cpu"),
        )
        self.sampler = StepSampler(20, 180, batch_size, grad_accum, 1, seed)
        self.grad_norms: list[float] = []
        self.checked = 0

    def on_train_begin(self, run):
        self.begin = run.start_step

    def after_backward(self, run, step):
        params = [p for p in run.model.parameters() if p.requires_grad]
        # The kept graph is usable: the forget risk of the step's last micro-batch can be differentiated.
        torch.autograd.grad(step.loss_output.forget_risk, params, retain_graph=True, allow_unused=True)
        twin = copy.deepcopy(run.model)
        twin.zero_grad(set_to_none=True)
        micro_batches = self.sampler.micro_batches(step.step - 1, 0)
        for micro in micro_batches:
            (run.objective(twin, self.builder.build(micro), run.ref_model).loss / len(micro_batches)).backward()
        expected = [p.grad for p in twin.parameters() if p.requires_grad]
        for got, want in zip(params, expected):
            torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-7)
        self.grad_norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in expected)))
        self.checked += 1

    def on_train_end(self, run):
        self.ended = True


def test_callbacks_see_the_full_unclipped_gradient_before_the_step(tmp_path_factory, tmp_path):
    data, model = tiny_paths(tmp_path_factory)
    check = GradientCheck(data, model, batch_size=2, grad_accum=3, seed=5)
    result = unlearn(
        config(data, model, tmp_path / "run", method="NPO+NLL", batch_size=2, grad_accum=3, seed=5, max_grad_norm=1e-3),
        callbacks=[check],
    )
    assert check.checked == result.steps == 4 and check.ended
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    # Logged norms are the pre-clipping norms; clipping to 1e-3 changed the updates (tiny steps).
    assert [r["grad_norm"] for r in log] == pytest.approx(check.grad_norms, rel=1e-5)
    assert all(r["grad_norm"] > 1e-2 for r in log)


def test_step_stats_are_global_token_means():
    torch.manual_seed(0)

    def batch(lengths):
        labels = torch.full((len(lengths), 6), -100)
        for row, n in enumerate(lengths):
            labels[row, 6 - n :] = 1
        return {"labels": labels}

    micro = [(batch([2, 5]), batch([3, 1]), 0.7, 1.5), (batch([4, 4]), batch([5, 2]), 0.2, 2.5)]
    stats = StepStats()
    weights = []
    for forget, retain, f_risk, r_risk in micro:
        token_w = torch.rand(2, 6) * (forget["labels"] != -100)
        token_w[:, 0] = 0
        weights.append(token_w)
        out = LossOutput(
            loss=torch.tensor(f_risk + r_risk),
            forget_loss=torch.tensor(f_risk),
            retain_loss=torch.tensor(r_risk),
            forget_risk=torch.tensor(f_risk),
            retain_risk=torch.tensor(r_risk),
            token_weights=token_w,
        )
        stats.add(out, UnlearnBatch(forget=forget, retain=retain), out.forget_risk)
    record = stats.reduce()
    n_f = [int((f["labels"][:, 1:] != -100).sum()) for f, _, _, _ in micro]
    n_r = [int((r["labels"][:, 1:] != -100).sum()) for _, r, _, _ in micro]
    assert record["loss"] == pytest.approx((0.7 + 1.5 + 0.2 + 2.5) / 2)
    assert record["forget_risk"] == pytest.approx((0.7 * n_f[0] + 0.2 * n_f[1]) / sum(n_f))
    assert record["retain_risk"] == pytest.approx((1.5 * n_r[0] + 2.5 * n_r[1]) / sum(n_r))
    assert record["mean_token_weight"] == pytest.approx(float(sum(w.sum() for w in weights)) / sum(n_f))
    assert "mean_item_weight" not in record


def test_schedule_warms_up_then_decays_linearly():
    assert warmup_steps_for(1.0, steps_per_epoch=4, total_steps=20) == 4
    assert warmup_steps_for(0.5, steps_per_epoch=5, total_steps=2) == 2
    param = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [t / 4 for t in range(4)] + [(12 - t) / 8 for t in range(4, 12)]
    assert lrs == pytest.approx(expected)


def test_rng_states_round_trip_without_pickle(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.randn(1)  # leave the generators mid-stream (numpy gauss cache)
    _save_rng(tmp_path, rank=0)
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.randn(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _load_rng(tmp_path, rank=0)
    got = (random.random(), np.random.normal(), np.random.rand(), torch.randn(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_cli_options_map_onto_the_config():
    import argparse

    from geffect.cli.unlearn import build_unlearn_parser, parse_hparams
    from geffect.cli.unlearn import unlearn_config as config_from_args

    parser = build_unlearn_parser(argparse.ArgumentParser())
    args = parser.parse_args(
        "--model m --data d --out o --method NPO+KL --beta 0.5 --hparam delta=1 --lr 2e-5 --grad-accum 3 "
        "--max-grad-norm 1 --lora-r 8 --resume".split()
    )
    cfg = config_from_args(args)
    assert (cfg.method, cfg.hparams, cfg.lr, cfg.grad_accum, cfg.max_grad_norm, cfg.lora_r, cfg.resume) == (
        "NPO+KL",
        {"delta": 1.0, "beta": 0.5},
        2e-5,
        3,
        1.0,
        8,
        True,
    )
    assert cfg.epochs == 5 and cfg.warmup_epochs == 1.0 and cfg.weight_decay == 0.0  # the paper's defaults
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_hparams(["beta"], None)
    with pytest.raises(UsageError, match="disagree"):
        parse_hparams(["beta=1"], 2.0)
    with pytest.raises(UsageError, match="--resume and --overwrite"):
        config("d", "m", "o", resume=True, overwrite=True).validate()
