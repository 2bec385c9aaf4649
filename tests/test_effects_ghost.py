"""Ghost instance contributions and per-token contributions against per-item / per-token autograd (float64)."""

from __future__ import annotations

import pytest
import torch

from geffect.effects.blocks import discover_layout
from geffect.effects.dots import Breakdown
from geffect.effects.engine import ghost_effect, gradient_effect
from geffect.effects.tokens import risk_terms, token_effects_double_backward, token_effects_forward
from test_effects_models import ARCH_IDS, ARCHS, random_direction, tiny_batch, tiny_model

# LlamaRMSNorm computes in float32 even in a float64 model: reverse-mode references and forward-mode tangents
# then agree to float32 precision only. Every other architecture here is float64 end to end.
TOKEN_RTOL = {"llama": 1e-6}


def _dot(grads, G) -> float:
    return sum(float((g.double() * d.double()).sum()) for g, d in zip(grads, G) if g is not None)


def reference_items_and_tokens(model, layout, batch, G, with_tokens: bool = True):
    """Separate backward per item and per token (per item only without `with_tokens`), exact dot in float64."""
    _, ce, n = risk_terms(model, batch)
    items = []
    tokens = torch.zeros_like(ce)
    for i in range(ce.shape[0]):
        grads = torch.autograd.grad(ce[i].sum() / n, layout.params, retain_graph=True, allow_unused=True)
        items.append(_dot(grads, G))
        for t in [] if not with_tokens else torch.nonzero(batch["labels"][i] != -100).flatten().tolist():
            if t == 0:
                continue
            grads = torch.autograd.grad(ce[i, t] / n, layout.params, retain_graph=True, allow_unused=True)
            tokens[i, t] = _dot(grads, G)
    return torch.tensor(items, dtype=torch.float64), tokens


@pytest.mark.parametrize(
    "arch,tied,padding", [(a, t, ("right", "left")[k % 2]) for k, (a, t) in enumerate(ARCHS)], ids=ARCH_IDS
)
def test_ghost_items_and_tokens_equal_autograd(arch, tied, padding):
    model = tiny_model(arch, tied)
    layout = discover_layout(model)
    batch = tiny_batch(padding=padding)
    G = random_direction(layout)
    ref_items, ref_tokens = reference_items_and_tokens(model, layout, batch, G)
    scale = float(ref_items.abs().max())

    effect = ghost_effect(model, layout, [batch], G, tokens=True)
    items = torch.tensor([effect.items[i] for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(items, ref_items, rtol=0, atol=1e-11 * scale)

    plain = gradient_effect(model, layout, [batch], G)
    torch.testing.assert_close(effect.per_tensor, plain.per_tensor, rtol=0, atol=1e-11 * scale)
    assert effect.total == pytest.approx(float(ref_items.sum()), abs=1e-11 * scale)

    # tokens: per loss token, aligned with labels, summing to the items
    rtol = TOKEN_RTOL.get(arch, 1e-10)
    for row in range(3):
        valid = (batch["labels"][row] != -100).clone()
        valid[0] = False
        expected = ref_tokens[row][valid]
        got = torch.tensor(effect.tokens[row], dtype=torch.float64)
        assert got.shape == expected.shape and effect.item_tokens[row] == int(valid.sum())
        torch.testing.assert_close(got, expected, rtol=0, atol=rtol * scale)
        assert sum(effect.tokens[row]) == pytest.approx(effect.items[row], abs=rtol * scale)

    # groups, layers and tensors sum to the total
    breakdown = effect.breakdown
    groups, layers = breakdown.groups(), breakdown.layers()
    assert sum(groups.values()) == pytest.approx(breakdown.total, abs=1e-12 * scale)
    assert sum(layers) == pytest.approx(groups["shallow"] + groups["middle"] + groups["deep"], abs=1e-12 * scale)
    assert sum(breakdown.tensors().values()) == pytest.approx(breakdown.total, abs=1e-12 * scale)
    assert len(layers) == 3 and all(v != 0 for v in layers)


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_double_backward_tokens_equal_forward_mode(arch):
    model = tiny_model(arch, arch == "gpt2")
    layout = discover_layout(model)
    batch = tiny_batch(padding="left")
    G = random_direction(layout)
    forward = token_effects_forward(model, layout, batch, G)
    backward = token_effects_double_backward(model, layout, batch, G)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-12 * float(forward.abs().max()))
    assert float(forward[batch["labels"] == -100].abs().max()) == 0.0


def test_several_batches_use_the_set_token_count():
    """e(D) over two batches (different widths) equals grad R(D) . G with R the token mean over the whole set."""
    model = tiny_model("phi", False)
    layout = discover_layout(model)
    batches = [tiny_batch(3, 9, seed=1, first_index=0), tiny_batch(2, 7, seed=5, first_index=3)]
    G = random_direction(layout)
    ces = [risk_terms(model, b)[1] for b in batches]
    n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    reference = _dot(torch.autograd.grad(sum(ce.sum() for ce in ces) / n, layout.params), G)
    ghost = ghost_effect(model, layout, batches, G)
    plain = gradient_effect(model, layout, batches, G)
    assert sorted(ghost.items) == [0, 1, 2, 3, 4] and ghost.n_tokens == n
    assert sum(ghost.items.values()) == pytest.approx(reference, rel=1e-11)
    assert ghost.total == pytest.approx(reference, rel=1e-11)
    assert plain.total == pytest.approx(reference, rel=1e-11)
    risk = float(sum(ce.detach().sum() for ce in ces) / n)
    assert ghost.risk == pytest.approx(risk, rel=1e-12) and plain.risk == pytest.approx(risk, rel=1e-12)


def test_parameters_outside_module_calls_are_exact():
    """A bare parameter of the root (covered by a jvp of the root's forward) and a parameter of a module that is
    never called (read directly by its parent: plain-gradient total, forward-mode items) are both exact."""
    model = tiny_model("gpt2", True)
    model.logit_scale = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
    model.holder = torch.nn.Module()
    model.holder.shift = torch.nn.Parameter(torch.linspace(-0.5, 0.5, model.config.vocab_size, dtype=torch.float64))
    original = type(model).forward

    class Scaled(type(model)):
        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            out.logits = out.logits * self.logit_scale + self.holder.shift
            return out

    model.__class__ = Scaled
    layout = discover_layout(model)
    batch = tiny_batch()
    G = random_direction(layout)
    ref_items, _ = reference_items_and_tokens(model, layout, batch, G)
    effect = ghost_effect(model, layout, [batch], G)
    items = torch.tensor([effect.items[i] for i in range(3)], dtype=torch.float64)
    scale = float(ref_items.abs().max())
    torch.testing.assert_close(items, ref_items, rtol=0, atol=1e-11 * scale)
    plain = gradient_effect(model, layout, [batch], G)
    torch.testing.assert_close(effect.per_tensor, plain.per_tensor, rtol=0, atol=1e-11 * scale)
    assert effect.breakdown.tensors()["holder.shift"] != 0 and effect.breakdown.tensors()["logit_scale"] != 0


def test_bf16_model_accumulates_in_fp32_or_wider():
    model = tiny_model("llama", True, dtype=torch.bfloat16)
    layout = discover_layout(model)
    batch = tiny_batch()
    G = random_direction(layout)
    _, ce, n = risk_terms(model, batch)
    grads = torch.autograd.grad(ce.sum() / n, layout.params)
    exact = torch.tensor([float((g.double() * d.double()).sum()) for g, d in zip(grads, G)], dtype=torch.float64)
    plain = gradient_effect(model, layout, [batch], G)
    assert plain.per_tensor.dtype == torch.float64
    # fp32 partial sums over 4096-element chunks, float64 across chunks: far from bf16 accumulation (~1e-2)
    torch.testing.assert_close(plain.per_tensor, exact, rtol=1e-5, atol=1e-6 * float(exact.abs().max()))
    ghost = ghost_effect(model, layout, [batch], G)  # fp32 work, float64 sums: close to the bf16 gradient dot
    assert ghost.total == pytest.approx(plain.total, rel=0.05)


def test_breakdown_json_shape():
    model = tiny_model("neox", False)
    layout = discover_layout(model)
    effect = gradient_effect(model, layout, [tiny_batch()], random_direction(layout))
    out = effect.breakdown.to_json(tensors=True)
    assert set(out) == {"total", "groups", "layers", "tensors"}
    assert isinstance(Breakdown(effect.per_tensor, layout).total, float)
    assert set(out["groups"]) == {"embed", "shallow", "middle", "deep", "lm_head", "other"}


def test_cleared_captures_free_the_graph():
    """Each output's hook refers back to its capture: `clear` must break that cycle, or every measured step's
    activations stay alive (a leak of ~60 MB per step on the tiny preset before the fix)."""
    import gc
    import weakref

    from geffect.effects.ghost import GhostRecorder

    model = tiny_model("llama", False)
    layout = discover_layout(model)
    recorder = GhostRecorder(model, layout)
    batch = tiny_batch(3, 9)
    with torch.enable_grad(), recorder.recording():
        risk, _, _ = risk_terms(model, batch)
    outputs = [weakref.ref(out) for capture in recorder._captures for out in capture.outputs]
    assert outputs
    recorder.backward(risk, random_direction(layout, seed=3), batch_size=3)
    del risk
    recorder.clear()
    gc.collect()
    assert all(ref() is None for ref in outputs)
    recorder.remove()


def test_tangent_rules_are_looked_up_along_the_mro_with_a_forward_mode_fallback():
    """Closed forms by module class (subclasses inherit them while the rule applies); anything else: None,
    the forward-mode fallback. Registering a rule for a new class makes the recorder use it."""
    from torch import nn

    from geffect.effects.ghost import TANGENT_RULES, GhostRecorder, register_tangent_rule, tangent_rule

    class MyLinear(nn.Linear):
        pass

    class MyLayerNorm(nn.LayerNorm):  # a subclass may change the forward: no closed form
        pass

    linear_rule = tangent_rule(nn.Linear(3, 2), {"weight", "bias"})
    assert linear_rule is not None and tangent_rule(MyLinear(3, 2), {"weight"}) is linear_rule
    assert tangent_rule(nn.LayerNorm(3), {"weight", "bias"}) is not None
    assert tangent_rule(MyLayerNorm(3), {"weight", "bias"}) is None
    assert tangent_rule(nn.Embedding(5, 3), {"weight"}) is not None
    assert tangent_rule(nn.Embedding(5, 3, max_norm=1.0), {"weight"}) is None
    assert tangent_rule(nn.Conv2d(1, 1, 1), {"weight", "bias"}) is None

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3, dtype=torch.float64))

        def forward(self, x):
            return x * self.weight

    calls = []

    @register_tangent_rule(Scale)
    def scale_terms(module, args, kwargs, delta, G):
        calls.append(1)
        return {"weight": (args[0] * G["weight"] * delta).reshape(delta.shape[0], -1).sum(1, dtype=torch.float64)}

    try:
        model = nn.Sequential(nn.Linear(3, 3, dtype=torch.float64), Scale())
        layout = discover_layout(model)
        G = random_direction(layout)
        x = torch.randn(4, 3, dtype=torch.float64)
        recorder = GhostRecorder(model, layout)
        with torch.enable_grad(), recorder.recording():
            risk = model(x).pow(2).sum()
        result = recorder.backward(risk, G, batch_size=4)
        recorder.remove()
        assert calls
        for row in range(4):
            grads = torch.autograd.grad(model(x[row : row + 1]).pow(2).sum(), layout.params)
            expected = torch.stack([(g * d).sum() for g, d in zip(grads, G)])
            torch.testing.assert_close(result.per_item[:, row], expected, rtol=1e-10, atol=1e-12)
    finally:
        TANGENT_RULES.pop(Scale, None)
