"""What the G-effect tracker logs under an update rule, on a hand-driven float64 loop (GPT-2: its LayerNorm
computes in the model's dtype): orthograd's per-item retaining G-effects, ge-project's e_r and the `plain`
G-effects beside the rule's."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import torch

from geffect.effects.config import TrackerConfig
from geffect.effects.tracker import GEffectTracker
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective
from geffect.runfolder import RunFolder
from geffect.training.callbacks import RunContext, StepContext
from geffect.training.config import UnlearnConfig
from geffect.updates import StepInputs, build_update
from test_effects_models import tiny_batch, tiny_model

ACCELERATOR = SimpleNamespace(
    autocast=contextlib.nullcontext,
    accumulate=lambda model: contextlib.nullcontext(),
    num_processes=1,
    is_main_process=True,
)


def _drive(tmp_path, rule_name, params, method, retain_loss, steps, instances=True, lr=0.05):
    """SGD steps with the rule and the tracker called as the trainer calls them; (records, rule infos)."""
    model = tiny_model("gpt2", dtype=torch.float64, layers=1)  # eval mode: no dropout
    ref = copy.deepcopy(model).eval()
    objective = build_objective(ObjectiveConfig(method, retain_loss=retain_loss))
    rule = build_update(rule_name, params)
    rule.setup(model, steps, 0)
    tracker = GEffectTracker(
        TrackerConfig(instances=instances), probe_batches=[tiny_batch(3, 9, seed=90, first_index=900)]
    )
    options = UnlearnConfig(model="tiny", data="unused", out=str(tmp_path), grad_accum=1, update=rule_name)
    run = RunContext(RunFolder(tmp_path), model, ACCELERATOR, objective, ref, None, options, None, steps)
    tracker.on_train_begin(run)
    params_list = [p for p in model.parameters() if p.requires_grad]
    infos = []
    for step in range(1, steps + 1):
        micro = [UnlearnBatch(forget=tiny_batch(3, 9, seed=step, first_index=10 * step),
                              retain=tiny_batch(4, 9, seed=50 + step, first_index=500 + 10 * step))]  # fmt: skip
        inputs = StepInputs(model, objective, ref, micro, ACCELERATOR, lambda loss, keep: loss.backward(), False, step)
        result = rule.compute(inputs)
        extra = {} if result.plain_grad is None else {"plain_grad": dict(zip(map(id, params_list), result.plain_grad))}
        context = StepContext(step=step, lr=lr, batch=result.batch, loss_output=result.output, extra=extra)
        tracker.after_backward(run, context)
        with torch.no_grad():
            for p in params_list:
                p -= lr * p.grad
                p.grad = None
        tracker.after_step(run, context)
        infos.append(result.info)
    tracker.on_train_end(run)
    return RunFolder(tmp_path).read_geffect(), infos


def test_orthograd_alpha_0_zeroes_every_retain_items_g_effect(tmp_path):
    records, _ = _drive(tmp_path, "orthograd", {"alpha": 0.0}, "GA", "none", steps=1)
    for record in records:
        scale = abs(record["e_u"]["total"])
        assert scale > 0 and len(record["items_r"]) == 4
        assert all(abs(c) <= 1e-10 * scale for c in record["items_r"].values()), record["items_r"]
        assert abs(record["plain"]["e_r"]["total"]) > 1e-6 * scale  # the plain ascent does touch the retain items


def test_ge_project_keeps_e_r_non_negative_where_it_projects(tmp_path):
    records, infos = _drive(tmp_path, "ge-project", {}, "NPO", "KL", steps=6, instances=False)
    projected = 0
    for record, info in zip(records, infos):
        e_r, plain = record["e_r"]["total"], record["plain"]["e_r"]["total"]
        scale = abs(plain) + abs(record["plain"]["e_u"]["total"])
        assert abs(info["e_r_before"] - plain) <= 1e-10 * scale  # the rule and the tracker see the same e_r
        if info["projected"]:
            projected += 1
            assert plain < 0 and e_r >= -1e-10 * scale
        else:
            assert abs(e_r - plain) <= 1e-10 * scale
    assert 0 < projected < len(records), [i["projected"] for i in infos]
