"""The in-run tracker against independent G-effect computations, on a hand-driven loop."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

from geffect.cli.unlearn import add_tracking_arguments, build_callbacks
from geffect.effects.blocks import discover_layout
from geffect.effects.config import TrackerConfig
from geffect.effects.engine import total_tokens
from geffect.effects.sides import linear_coefficients
from geffect.effects.tokens import risk_terms
from geffect.effects.tracker import GEffectTracker
from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective, parse_method_spec
from geffect.training.callbacks import StepContext
from test_effects_models import tiny_batch, tiny_model
from tracker_helpers import tracker_run


def _risk_grad(model, layout, batch) -> list[torch.Tensor]:
    risk, _, _ = risk_terms(model, batch)
    return list(torch.autograd.grad(risk, layout.params, allow_unused=True))


def _dot(left, right) -> float:
    return sum(float((a.double() * b.double()).sum()) for a, b in zip(left, right) if a is not None and b is not None)


def _drive(
    tmp_path,
    method: str,
    config: TrackerConfig,
    steps: int = 2,
    retain: bool = True,
    lr: float = 1e-3,
    idk: bool = False,
):
    """A minimal unlearning loop (SGD) calling the tracker as the trainer does; returns records and references."""
    model = tiny_model("gpt2", True)
    ref = copy.deepcopy(model)
    name, retain_loss = parse_method_spec(method)
    objective = build_objective(ObjectiveConfig(method=name, retain_loss=retain_loss))
    probe = [tiny_batch(3, 8, seed=40, first_index=500)]
    tracker = GEffectTracker(config, forget_batches=[tiny_batch(4, 9, seed=60, first_index=0)], probe_batches=probe)
    run = tracker_run(tmp_path, model, objective, ref, steps)
    tracker.on_train_begin(run)
    layout = discover_layout(model)
    references = []
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(torch.is_grad_enabled()))
    for step in range(1, steps + 1):
        batch = UnlearnBatch(
            forget=tiny_batch(4, 9, seed=step, first_index=10 * step),
            retain=tiny_batch(4, 9, seed=100 + step, first_index=200 + step) if retain else None,
            forget_idk=tiny_batch(4, 9, seed=300 + step, first_index=10 * step) if idk else None,
        )
        out = objective(model, batch, ref)
        out.loss.backward(retain_graph=True)
        G = [p.grad.detach().clone() for p in layout.params]
        forwards.clear()
        tracker.after_backward(run, StepContext(step=step, lr=lr, batch=batch, loss_output=out))
        new_forwards = sum(forwards)  # forwards with a graph (forward-mode token passes run without one)
        assert all(torch.equal(p.grad, g) for p, g in zip(layout.params, G))  # p.grad untouched
        retain_batch = batch.retain if retain else probe[0]
        grad_u, grad_r = _risk_grad(model, layout, batch.forget), _risk_grad(model, layout, retain_batch)
        references.append(
            {
                "G": G,
                "out": out,
                "batch": batch,
                "grad_u": grad_u,
                "forwards": new_forwards,
                "e_u": _dot(grad_u, G),
                "e_r": _dot(grad_r, G),
            }
        )
        with torch.no_grad():
            for p, g in zip(layout.params, G):
                p.sub_(lr * g)
            p.grad = None
        for p in layout.params:
            p.grad = None
        del out
    tracker.on_train_end(run)
    return read_jsonl(tmp_path / "geffect.jsonl"), references, model, layout


def test_ga_uses_the_free_linear_form_and_a_probe(tmp_path):
    records, refs, _, _ = _drive(tmp_path, "GA", TrackerConfig(tensors=True, activation_budget=0), retain=False)
    assert [r["step"] for r in records] == [1, 2]
    for record, ref in zip(records, refs):
        assert linear_coefficients(ref["out"], 1.0, 1.0) == (-1.0, 0.0)
        assert ref["forwards"] == 1  # the retain probe only: e_u came from G alone
        gg = sum(float((g.double() ** 2).sum()) for g in ref["G"])
        assert record["e_u"]["total"] == pytest.approx(-gg, rel=1e-10)
        assert record["e_u"]["total"] == pytest.approx(ref["e_u"], rel=1e-10)
        assert record["e_r"]["total"] == pytest.approx(ref["e_r"], rel=1e-10)
        assert sum(record["e_u"]["groups"].values()) == pytest.approx(record["e_u"]["total"], rel=1e-10)
        assert sum(record["e_u"]["tensors"].values()) == pytest.approx(record["e_u"]["total"], rel=1e-10)
    expected = -1e-3 * (records[0]["e_u"]["total"] + records[1]["e_u"]["total"])
    assert records[1]["predicted_change"]["e_u"] == pytest.approx(expected)
    assert (tmp_path / "geffect_layout.json").exists()


@pytest.mark.parametrize("instances", [False, True])
def test_probe_micro_batches_within_the_activation_budget_give_the_same_numbers(tmp_path, instances):
    """A budget below one item's activations runs the probe one item at a time; a budget of 0 in one forward."""
    whole, _, _, _ = _drive(
        tmp_path / "whole", "GA", TrackerConfig(instances=instances, activation_budget=0), retain=False
    )
    split, refs, _, _ = _drive(
        tmp_path / "split", "GA", TrackerConfig(instances=instances, activation_budget=1e-9), retain=False
    )
    for a, b, ref in zip(whole, split, refs):
        assert ref["forwards"] == 3  # the probe's three items, one forward each
        assert b["e_r"]["total"] == pytest.approx(ref["e_r"], rel=1e-10)
        assert b["e_r"]["layers"] == pytest.approx(a["e_r"]["layers"], rel=1e-10)
        assert b["risk_r"] == pytest.approx(a["risk_r"], rel=1e-12)
        if instances:
            assert b["items_r"] == pytest.approx(a["items_r"], rel=1e-9)


def test_the_activation_budget_sizes_micro_batches_from_the_measured_bytes():
    from geffect.effects.budget import ActivationBudget

    model = tiny_model("llama", False)
    batch = tiny_batch(6, 9, seed=1, first_index=0)
    layout = discover_layout(model)
    one_item = ActivationBudget(1e12, layout.params)
    with one_item.counting():
        sizes = []
        for micro in one_item.micro_batches(batch):
            sizes.append(micro["labels"].shape[0])
            risk, _, _ = risk_terms(model, micro)
            risk.backward()
    assert sizes == [1, 5]  # one item to measure, then the rest at once
    per_item = one_item.bytes_per_token * batch["labels"].shape[1]
    assert per_item > 0
    two_items = ActivationBudget(2.5 * per_item, layout.params)
    two_items.bytes_per_token = one_item.bytes_per_token
    assert [m["labels"].shape[0] for m in two_items.micro_batches(batch)] == [2, 2, 2]
    assert [m["index"].tolist() for m in two_items.micro_batches(batch)] == [[0, 1], [2, 3], [4, 5]]
    four = tiny_batch(4, 9, seed=2, first_index=0)
    three_items = ActivationBudget(3.5 * per_item, layout.params)
    three_items.bytes_per_token = one_item.bytes_per_token
    assert [m["labels"].shape[0] for m in three_items.micro_batches(four)] == [2, 2]  # even sizes, not [3, 1]


def test_graddiff_linear_form_matches_direct_gradients(tmp_path):
    records, refs, _, _ = _drive(tmp_path, "GradDiff", TrackerConfig())
    for record, ref in zip(records, refs):
        assert linear_coefficients(ref["out"], 1.0, 1.0) == (-1.0, 1.0)
        assert ref["forwards"] == 0
        assert record["e_u"]["total"] == pytest.approx(ref["e_u"], rel=1e-9)
        assert record["e_r"]["total"] == pytest.approx(ref["e_r"], rel=1e-10)


def test_npo_kl_with_instances_reuses_the_step_graph(tmp_path):
    records, refs, _, _ = _drive(tmp_path, "NPO+KL", TrackerConfig(instances=True, tokens=True))
    for record, ref in zip(records, refs):
        assert linear_coefficients(ref["out"], 1.0, 1.0) is None
        assert ref["forwards"] == 0  # both risks reused from the step's graph
        assert record["e_u"]["total"] == pytest.approx(ref["e_u"], rel=1e-10)
        assert record["e_r"]["total"] == pytest.approx(ref["e_r"], rel=1e-10)
        ids = [str(int(i)) for i in ref["batch"].forget["index"]]
        assert sorted(record["items_u"]) == sorted(ids)
        assert sum(record["items_u"].values()) == pytest.approx(ref["e_u"], rel=1e-10)
        assert sum(record["items_r"].values()) == pytest.approx(ref["e_r"], rel=1e-10)
        for item, tokens in record["tokens_u"].items():
            assert sum(tokens) == pytest.approx(record["items_u"][item], rel=1e-8, abs=1e-12)
        weights = record["weights"]["item"]
        expected = ref["out"].item_weights.tolist()
        assert [weights[i] for i in ids] == pytest.approx(expected)


def _item_references(model, layout, batch: dict, G) -> dict[str, float]:
    """c_i = grad(sum_t ce_it / N) . G by plain autograd, one item at a time (N: tokens of the whole batch)."""
    n_total = total_tokens([batch])
    result = {}
    for row, item in enumerate(batch["index"].tolist()):
        single = {k: v[row : row + 1] for k, v in batch.items()}
        risk, _, _ = risk_terms(model, single, n_total)
        result[str(item)] = _dot(torch.autograd.grad(risk, layout.params, allow_unused=True), G)
    return result


@pytest.mark.parametrize("method", ["GA", "GradDiff"])
def test_linear_losses_get_instances_from_the_steps_own_backward(tmp_path, monkeypatch, method):
    """GA / GradDiff with instances: the items' terms come from the output gradients the step's backward
    left, scaled by 1/coefficient; the only ghost backward is GA's retain probe (a new forward)."""
    from geffect.effects.ghost import GhostRecorder

    calls = []
    original = GhostRecorder.backward
    monkeypatch.setattr(GhostRecorder, "backward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    retain = method != "GA"
    model_before = tiny_model("gpt2", True)  # the state _drive starts from, for the step-1 references
    records, refs, _, _ = _drive(
        tmp_path, method, TrackerConfig(instances=True, activation_budget=0), steps=1, retain=retain
    )
    assert len(calls) == (1 if method == "GA" else 0)
    record, ref = records[0], refs[0]
    assert "objective_items" not in record  # the scatter is asked for separately
    layout = discover_layout(model_before)
    expected = _item_references(model_before, layout, ref["batch"].forget, ref["G"])
    assert record["items_u"] == pytest.approx(expected, rel=1e-9, abs=1e-14)
    assert sum(record["items_u"].values()) == pytest.approx(ref["e_u"], rel=1e-9)
    assert record["e_u"]["total"] == pytest.approx(ref["e_u"], rel=1e-9)
    if retain:
        expected_r = _item_references(model_before, layout, ref["batch"].retain, ref["G"])
        assert record["items_r"] == pytest.approx(expected_r, rel=1e-9, abs=1e-14)
    assert record["e_r"]["total"] == pytest.approx(ref["e_r"], rel=1e-9)


def _objective_item_gradients(method: str, model, ref_model, layout, forget: dict) -> dict[str, list]:
    """G_i, the part of the objective's gradient that flows through forget item i, in closed form per method."""
    n_total = total_tokens([forget])
    grads = {}
    for row, item in enumerate(forget["index"].tolist()):
        single = {k: v[row : row + 1] for k, v in forget.items()}
        if method == "NPO":  # -(2/beta) mean_i log sigma(...): item i's term is 1/B of the one-item loss
            objective = build_objective(ObjectiveConfig(method="NPO"))
            loss = (
                objective(model, UnlearnBatch(forget=single, retain=None), ref_model).loss / forget["labels"].shape[0]
            )
        else:  # GA, GradDiff: forget loss -R_f = -(sum of all token NLLs) / N
            loss = -risk_terms(model, single, n_total)[0]
        grads[str(item)] = list(torch.autograd.grad(loss, layout.params, allow_unused=True))
    return grads


@pytest.mark.parametrize("method", ["GA", "GradDiff", "NPO"])
def test_objective_split_per_forget_item_matches_per_item_autograd(tmp_path, method):
    """The paper's instance scatter: every forget item at (grad R_u . G_i, grad R_r . G_i)."""
    retain = method != "GA"
    model_before = tiny_model("gpt2", True)
    ref_model = copy.deepcopy(model_before)
    records, refs, _, _ = _drive(tmp_path, method, TrackerConfig(instances=True, scatter=True), steps=1, retain=retain)
    record, ref = records[0], refs[0]
    layout = discover_layout(model_before)
    forget = ref["batch"].forget
    retain_batch = ref["batch"].retain if retain else tiny_batch(3, 8, seed=40, first_index=500)
    grad_u, grad_r = _risk_grad(model_before, layout, forget), _risk_grad(model_before, layout, retain_batch)
    item_grads = _objective_item_gradients(method, model_before, ref_model, layout, forget)
    split = record["objective_items"]
    assert sorted(split) == sorted(item_grads)
    for item, g_i in item_grads.items():
        assert split[item]["e_u"] == pytest.approx(_dot(grad_u, g_i), rel=1e-9, abs=1e-14)
        assert split[item]["e_r"] == pytest.approx(_dot(grad_r, g_i), rel=1e-9, abs=1e-14)
    if method != "GradDiff":  # no retain term: the forget items carry all of G
        assert sum(v["e_u"] for v in split.values()) == pytest.approx(record["e_u"]["total"], rel=1e-9)
        assert sum(v["e_r"] for v in split.values()) == pytest.approx(record["e_r"]["total"], rel=1e-9)


def test_no_objective_split_when_a_refusal_forward_joins_the_graph(tmp_path):
    records, _, _, _ = _drive(tmp_path, "IdkDPO", TrackerConfig(instances=True, scatter=True), steps=1, idk=True)
    assert "objective_items" not in records[0] and "items_u" in records[0]


def test_ema_estimator_smooths_gradients_like_the_paper(tmp_path):
    records, refs, model, layout = _drive(tmp_path, "NPO", TrackerConfig(estimator="ema"), steps=2)
    # By hand: ema_1 = g_1, ema_2 = 0.6 g_1 + 0.4 g_2, for the risk gradient and for G alike.
    first = [0.6 * a + 0.4 * b for a, b in zip(refs[0]["grad_u"], refs[1]["grad_u"])]
    second = [0.6 * a + 0.4 * b for a, b in zip(refs[0]["G"], refs[1]["G"])]
    assert records[0]["ema"]["e_u"]["total"] == pytest.approx(refs[0]["e_u"], rel=1e-5)
    assert records[1]["ema"]["e_u"]["total"] == pytest.approx(_dot(first, second), rel=1e-5)
    assert records[1]["e_u"]["total"] == pytest.approx(refs[1]["e_u"], rel=1e-10)
    assert abs(_dot(first, second) - refs[1]["e_u"]) > 1e-3 * abs(refs[1]["e_u"])  # smoothing changed it


def test_full_estimator_and_every(tmp_path):
    records, refs, _, _ = _drive(tmp_path, "WGA", TrackerConfig(estimator="full", every=2, instances=True), steps=2)
    assert [r["step"] for r in records] == [2]
    assert len(records[0]["items_u"]) == 4 and len(records[0]["items_r"]) == 3
    assert sum(records[0]["items_u"].values()) == pytest.approx(records[0]["e_u"]["total"], rel=1e-10)
    assert records[0]["n_tokens_u"] == total_tokens([tiny_batch(4, 9, seed=60)])


def tracker_from_args(args):
    callbacks = build_callbacks(args)
    return callbacks[0] if callbacks else None


def test_cli_arguments_build_the_tracker():
    parser = argparse.ArgumentParser()
    add_tracking_arguments(parser)
    assert tracker_from_args(parser.parse_args([])) is None
    args = parser.parse_args(
        [
            "--track-geffect",
            "--geffect-every",
            "5",
            "--geffect-estimator",
            "ema",
            "--geffect-instances",
            "--geffect-probe-size",
            "8",
        ]
    )
    tracker = tracker_from_args(args)
    assert tracker.config == TrackerConfig(every=5, estimator="ema", instances=True, probe_size=8)
    args = parser.parse_args(["--track-geffect", "--geffect-activation-budget", "0"])
    assert tracker_from_args(args).config.activation_budget == 0
    with pytest.raises(UsageError, match="activation-budget"):
        tracker_from_args(parser.parse_args(["--track-geffect", "--geffect-activation-budget", "-1"]))
    with pytest.raises(Exception):
        TrackerConfig(every=0).validate()
