"""Update rules (geffect.updates) against independent float64 computations: hand-written two-pass SAM and
smoothing, torch.func transcriptions of the penalised losses, per-item autograd for orthograd, and the
registry's one-line errors."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from geffect.effects.tokens import math_attention, risk_terms
from geffect.errors import UsageError
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective
from geffect.updates import StepInputs, build_update, update_names
from geffect.updates.persample import per_item_loop, per_item_vmap
from test_effects_models import tiny_batch, tiny_model

ACCELERATOR = SimpleNamespace(
    autocast=contextlib.nullcontext, accumulate=lambda model: contextlib.nullcontext(), num_processes=1
)


def _micro(n: int = 2, seed: int = 0) -> list[UnlearnBatch]:
    return [
        UnlearnBatch(
            forget=tiny_batch(3, 9, seed=seed + 10 * i + 1, first_index=10 * i),
            retain=tiny_batch(3, 9, seed=seed + 10 * i + 2, first_index=100 + 10 * i),
        )
        for i in range(n)
    ]


def _inputs(model, objective, micro, step: int = 1) -> StepInputs:
    n = len(micro)
    return StepInputs(
        model=model,
        objective=objective,
        ref_model=None,
        micro_batches=micro,
        accelerator=ACCELERATOR,
        backward=lambda loss, retain_graph: (loss / n).backward(retain_graph=retain_graph),
        keep_graph=False,
        step=step,
        seed=3,
    )


def _params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _grads(loss, params):
    return [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))
    ]


def _mean_grads(model, micro, part):
    """The mean over micro-batches of the gradient of `part(out)`, with a fresh objective call each."""
    objective = build_objective(ObjectiveConfig("GA", retain_loss="NLL", gamma=0.7, alpha=1.3))
    params = _params(model)
    total = [torch.zeros_like(p) for p in params]
    for batch in micro:
        out = objective(model, batch)
        for acc, g in zip(total, _grads(part(out), params)):
            acc += g / len(micro)
    return total


def _run(rule_name: str, params: dict | None = None, method=("GA", "NLL"), arch: str = "llama"):
    # one layer: fast; GPT-2 for second derivatives (Llama's RMSNorm computes in float32 even in a float64 model)
    model = tiny_model(arch, dtype=torch.float64, layers=1)
    objective = build_objective(ObjectiveConfig(method[0], retain_loss=method[1], gamma=0.7, alpha=1.3))
    rule = build_update(rule_name, params or {})
    rule.setup(model, total_steps=5, seed=3)
    micro = _micro()
    before = [p.detach().clone() for p in _params(model)]
    result = rule.compute(_inputs(model, objective, micro))
    after = [p.detach().clone() for p in _params(model)]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "the rule must leave the weights as they were"
    return model, micro, result, [p.grad.detach().clone() for p in _params(model)]


def _close(a, b, tol=1e-10):
    scale = max(max(float(x.abs().max()) for x in b), 1e-30)
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) <= tol * scale


def test_plain_equals_the_objective_gradient():
    model, micro, result, got = _run("plain")
    expected = _mean_grads(model, micro, lambda out: 0.7 * out.forget_loss + 1.3 * out.retain_loss)
    assert _close(got, expected) and result.plain_grad is None


def test_sam_is_a_hand_written_two_pass_computation():
    model, micro, result, got = _run("sam", {"rho": 0.05})
    g_f = _mean_grads(model, micro, lambda out: 0.7 * out.forget_loss)
    g_r = _mean_grads(model, micro, lambda out: 1.3 * out.retain_loss)
    size = torch.sqrt(sum((g**2).sum() for g in g_f))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(_params(moved), g_f):
            p += 0.05 * g / size
    sharp = _mean_grads(moved, micro, lambda out: 0.7 * out.forget_loss)
    assert _close(got, [a + b for a, b in zip(sharp, g_r)])
    assert not _close(got, [a + b for a, b in zip(g_f, g_r)], tol=1e-6)  # the perturbation matters
    assert _close(result.plain_grad, [a + b for a, b in zip(g_f, g_r)])


def test_rs_averages_forget_gradients_at_noisy_weights():
    model, micro, result, got = _run("rs", {"samples": 2, "sigma": 1e-2})
    g_r = _mean_grads(model, micro, lambda out: 1.3 * out.retain_loss)
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 1)  # the rule's documented seeding: seed, step
    draws = []
    for _ in range(2):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p in _params(moved):
                p += 1e-2 * torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p)
        draws.append(_mean_grads(moved, micro, lambda out: 0.7 * out.forget_loss))
    assert _close(got, [(a + b) / 2 + c for a, b, c in zip(*draws, g_r)])
    _, _, _, again = _run("rs", {"samples": 2, "sigma": 1e-2})
    assert all(torch.equal(a, b) for a, b in zip(got, again))  # same seed, same numbers


def _functional(model, micro_batch, part):
    """part(objective output) as a function of a {name: tensor} mapping of the weights (torch.func)."""
    objective = build_objective(ObjectiveConfig("GA", retain_loss="NLL", gamma=0.7, alpha=1.3))
    return lambda weights: part(_call(model, weights, objective, micro_batch))


def _call(model, weights, objective, batch):
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self):
            return objective(self.model, batch)

    return torch.func.functional_call(Wrapped(), {f"model.{k}": v for k, v in weights.items()}, ())


def _weights(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _flat_norm(d: dict) -> torch.Tensor:
    return torch.sqrt(sum((v**2).sum() for v in d.values()))


@pytest.mark.parametrize("rule", ["gp", "cr"])
def test_penalties_equal_autograd_of_the_penalised_loss(rule):
    params = {"lambda": 0.5} if rule == "gp" else {"lambda": 0.5, "h": 0.05}
    model, micro, result, got = _run(rule, params, arch="gpt2")
    weights = _weights(model)
    expected = {n: torch.zeros_like(w) for n, w in weights.items()}
    with math_attention():
        for batch in micro:
            forget = _functional(model, batch, lambda out: 0.7 * out.forget_loss)
            retain = _functional(model, batch, lambda out: 1.3 * out.retain_loss)
            grad_forget = torch.func.grad(forget)
            if rule == "gp":
                penalty = lambda w: _flat_norm(grad_forget(w))  # noqa: E731
            else:
                g0 = grad_forget(weights)
                v = {n: g / _flat_norm(g0) for n, g in g0.items()}  # held constant, as CURE does

                def penalty(w):
                    moved = grad_forget({n: w[n] + 0.05 * v[n] for n in w})
                    here = grad_forget(w)
                    return _flat_norm({n: moved[n] - here[n] for n in w})

            total = torch.func.grad(lambda w: forget(w) + 0.5 * penalty(w) + retain(w))(weights)
            for n in expected:
                expected[n] += total[n] / len(micro)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert _close(got, [expected[n] for n in names], tol=1e-9)
    assert not _close(got, result.plain_grad, tol=1e-4)  # the penalty shapes the gradient
    assert result.info["penalty"] > 0


def _per_item_reference(model, batch) -> list[list[torch.Tensor]]:
    """Each item's own mean-NLL gradient, by plain autograd on the item alone (padding kept)."""
    params = _params(model)
    out = []
    for i in range(batch["labels"].shape[0]):
        item = {k: v[i : i + 1] for k, v in batch.items()}
        out.append(_grads(risk_terms(model, item)[0], params))
    return out


def test_per_item_gradients_by_vmap_and_loop_match_autograd():
    model = tiny_model("llama", dtype=torch.float64, layers=1)
    batch = tiny_batch(3, 9, seed=5)
    reference = _per_item_reference(model, batch)
    for way in (per_item_loop, per_item_vmap):
        rows = way(model, _params(model), batch)
        for k in range(len(rows)):
            stacked = torch.stack([r[k] for r in reference])
            assert torch.allclose(rows[k], stacked, atol=1e-12, rtol=1e-9), way.__name__


@pytest.mark.parametrize("mode", ["span", "mean"])
def test_orthograd_projection_is_orthogonal_per_tensor(mode):
    model, micro, result, got = _run("orthograd", {"alpha": 0.0, "mode": mode}, method=("GA", "none"))
    reference = [row for b in micro for row in _per_item_reference(model, b.retain)]
    g_f = _mean_grads(model, micro, lambda out: 0.7 * out.forget_loss)
    checked = 0
    for k, (projected, forget) in enumerate(zip(got, g_f)):
        rows = [r[k].reshape(-1) for r in reference]
        if mode == "mean":
            rows = [torch.stack(rows).mean(0)]
        flat = projected.reshape(-1)
        for row in rows:
            denominator = float(flat.norm() * row.norm())
            if denominator > 1e-30:
                assert abs(float(flat @ row)) / denominator < 1e-10
                checked += 1
    assert checked > 10
    assert not _close(got, g_f, tol=1e-3)  # something was projected out


def test_orthograd_mixes_the_mean_retain_gradient():
    model, micro, _, got = _run("orthograd", {"alpha": 1.0}, method=("GA", "none"))
    reference = [row for b in micro for row in _per_item_reference(model, b.retain)]
    mean = [torch.stack([r[k] for r in reference]).mean(0) for k in range(len(got))]
    assert _close(got, mean)


def test_weight_averaging_saves_the_mean_of_the_last_steps():
    model = torch.nn.Linear(2, 1, dtype=torch.float64)
    rule = build_update("wa", {"last": 2})
    rule.setup(model, total_steps=4, seed=0)
    seen = []
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.fill_(float(step))
        seen.append(float(step))
        rule.after_optimizer_step(model, step)
    rule.before_save(model)
    assert torch.all(model.weight == 3.5)  # mean of steps 3 and 4
    assert rule.summary()["averaged_steps"] == 2
    default = build_update("wa")
    default.setup(model, total_steps=10, seed=0)
    assert default.first == 9  # the last fifth


def test_registry_names_and_errors():
    assert update_names() == ["plain", "sam", "rs", "gp", "cr", "wa", "orthograd", "ge-project"]
    bad = [
        ("nope", {}, "unknown update rule 'nope'"),
        ("sam", {"radius": 1}, "unknown parameter 'radius' for update rule sam; known: rho"),
        ("sam", {"rho": -1}, "must be a positive number"),
        ("sam", {"rho": "big"}, "must be a number"),
        ("rs", {"samples": 1.5}, "must be an integer"),
        ("orthograd", {"mode": "cone"}, "choose one of span, mean"),
        ("orthograd", {"alpha": 2}, "must be in [0, 1]"),
        ("ge-project", {"per_group": "yes"}, "must be true or false"),
    ]
    for name, params, message in bad:
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
            build_update(name, params)
        assert "\n" not in str(err.value)


def test_cli_refuses_bad_rules_in_one_line(capsys):
    from geffect.cli.main import main

    base = ["unlearn", "--model", "m", "--data", "d", "--out", "o", "--method", "GA"]
    for extra, message in (
        (["--update", "nope"], "unknown --update 'nope'"),
        (["--update", "sam", "--update-param", "rho=0"], "rho=0"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
