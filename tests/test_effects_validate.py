"""First-order check of the G-effect (acceptance 3), the GA identity e_u = -||grad R(D_u)||^2, and the EMA."""

from __future__ import annotations

import copy

import pytest
import torch

from geffect.effects.blocks import discover_layout
from geffect.effects.engine import ghost_effect, gradient_effect
from geffect.effects.estimators import GradientEma
from geffect.effects.tokens import risk_terms
from geffect.effects.validate import first_order_check
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective
from test_effects_models import random_direction, tiny_batch, tiny_model


def _setup():
    model = tiny_model("gpt2", True)  # float64 end to end (Llama's RMSNorm would add float32 noise)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(9)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    forget = tiny_batch(4, 10, seed=3)
    retain = tiny_batch(4, 10, seed=4, first_index=100)
    return model, ref, forget, retain


@pytest.mark.parametrize("method", ["GA", "NPO", "WGA"])
def test_first_order_check_within_two_percent(method):
    model, ref, forget, retain = _setup()
    objective = build_objective(ObjectiveConfig(method=method))

    def loss_fn(m):
        return objective(m, UnlearnBatch(forget=forget, retain=retain), ref).loss

    before = [p.detach().clone() for p in model.parameters()]
    sets = {"forget": [forget], "retain": [retain]}
    small = first_order_check(model, loss_fn, sets, eta=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # restored exactly
    assert small["forget"].e < 0  # every one of these objectives raises the forget risk
    for name, result in small.items():
        assert result.relative_error < 0.02, (name, result)
        assert result.measured == pytest.approx(result.risk_after - result.risk_before)
    # The error is the second-order term: a 100x larger step makes it clearly larger (the check can fail).
    large = first_order_check(model, loss_fn, sets, eta=1e-3)
    assert large["forget"].relative_error > 10 * small["forget"].relative_error


def test_ga_full_estimator_is_minus_squared_gradient_norm():
    model, _, _, _ = _setup()
    layout = discover_layout(model)
    batches = [tiny_batch(3, 9, seed=11, first_index=0), tiny_batch(3, 9, seed=12, first_index=3)]
    whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    objective = build_objective(ObjectiveConfig(method="GA"))
    G = list(torch.autograd.grad(objective(model, UnlearnBatch(forget=whole)).loss, layout.params))
    risk, _, _ = risk_terms(model, whole)
    grad_risk = torch.autograd.grad(risk, layout.params)
    expected = -sum(float((g.double() ** 2).sum()) for g in grad_risk)
    assert gradient_effect(model, layout, batches, G).total == pytest.approx(expected, rel=1e-12)
    ghost = ghost_effect(model, layout, batches, G)
    assert ghost.total == pytest.approx(expected, rel=1e-11)
    assert sum(ghost.items.values()) == pytest.approx(expected, rel=1e-11)
    assert sorted(ghost.items) == list(range(6))


def test_gradient_ema_follows_the_paper_rule():
    model = tiny_model("neox", False)
    layout = discover_layout(model)
    grads = [random_direction(layout, seed=s) for s in (1, 2, 3)]
    ema = GradientEma()
    for g in grads:
        ema.update(g)
    expected = [0.6 * (0.6 * a + 0.4 * b) + 0.4 * c for a, b, c in zip(*grads)]
    for got, want in zip(ema.values, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)
    other = GradientEma()
    other.update(grads[0])
    dots = ema.dots(other)
    want = torch.tensor(
        [float((a.double() * b.double()).sum()) for a, b in zip(ema.values, grads[0])], dtype=torch.float64
    )
    torch.testing.assert_close(dots, want, rtol=1e-6, atol=1e-6)
