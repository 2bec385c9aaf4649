"""Per-item G-effects exact or refused: planted modules whose ghost rule would be wrong, the check before
training, the run-time guard on the first measured step, and measurement without dropout (effects.exactness)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from geffect.effects.blocks import discover_layout
from geffect.effects.config import TrackerConfig
from geffect.effects.engine import ghost_effect, gradient_effect
from geffect.effects.exactness import dropout_active, split_mismatches
from geffect.effects.ghost import TANGENT_RULES, register_tangent_rule, tangent_rule
from geffect.effects.tracker import GEffectTracker
from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective, parse_method_spec
from geffect.training.callbacks import StepContext
from test_effects_architectures import arch_model
from test_effects_ghost import reference_items_and_tokens
from test_effects_models import random_direction, tiny_batch, tiny_model
from tracker_helpers import tracker_run


class ScaledEmbedding(nn.Embedding):
    """Gemma's kind of table: the rows times a factor. A plain-table rule would lose the factor."""

    def forward(self, input_ids):
        return super().forward(input_ids) * 3.0


def _plant_scaled_embedding(model) -> ScaledEmbedding:
    old = model.get_input_embeddings()
    new = ScaledEmbedding(old.num_embeddings, old.embedding_dim, padding_idx=old.padding_idx, dtype=old.weight.dtype)
    new.weight = old.weight
    model.set_input_embeddings(new)
    return new


def _items(effect, n: int) -> torch.Tensor:
    return torch.tensor([effect.items[i] for i in range(n)], dtype=torch.float64)


def _assert_exact(model, batch, G=None) -> None:
    layout = discover_layout(model)
    G = G or random_direction(layout)
    ref_items, _ = reference_items_and_tokens(model, layout, batch, G, with_tokens=False)
    effect = ghost_effect(model, layout, [batch], G)
    scale = float(ref_items.abs().max())
    torch.testing.assert_close(_items(effect, len(ref_items)), ref_items, rtol=0, atol=1e-11 * scale)
    torch.testing.assert_close(
        effect.per_tensor, gradient_effect(model, layout, [batch], G).per_tensor, rtol=0, atol=1e-11 * scale
    )


def test_an_embedding_subclass_that_scales_its_output_is_not_taken_for_a_plain_table():
    model = tiny_model("llama", False)
    planted = _plant_scaled_embedding(model)
    assert tangent_rule(planted, {"weight"}) is None  # overrides forward: no inherited closed form
    assert tangent_rule(nn.Embedding(4, 2), {"weight"}) is not None
    _assert_exact(model, tiny_batch())


def test_a_wrong_closed_form_is_caught_on_first_use_and_forward_mode_taken(caplog):
    """A closed form registered for the planted class that forgets the factor: the recorder compares it with
    forward mode on the first real inputs, logs the class and uses forward mode; the numbers stay exact."""

    @register_tangent_rule(ScaledEmbedding)
    def forgets_the_scale(module, args, kwargs, delta, G):
        rows = nn.functional.embedding(args[0], G["weight"])
        return {"weight": (rows * delta).reshape(delta.shape[0], -1).sum(1, dtype=torch.float64)}

    try:
        model = tiny_model("llama", False)
        _plant_scaled_embedding(model)
        with caplog.at_level(logging.WARNING, logger="geffect.effects.ghost"):
            _assert_exact(model, tiny_batch())
        assert "ScaledEmbedding" in caplog.text
    finally:
        TANGENT_RULES.pop(ScaledEmbedding, None)


class _Opaque(torch.autograd.Function):
    """x * w with a backward that cannot be differentiated again and no jvp: no exact per-item term exists."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).reshape(-1, x.shape[-1]).sum(0)


class OpaqueScale(nn.Module):
    def __init__(self, width: int, dtype=torch.float64):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, dtype=dtype))

    def forward(self, x):
        return _Opaque.apply(x, self.weight)


class _NoForwardMode(torch.autograd.Function):
    """x * w, differentiable twice in reverse mode, whose forward-mode rule fails with an unusual message."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).reshape(-1, x.shape[-1]).sum(0)

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent):
        raise ValueError("this build has no tangents today")


class NoForwardModeScale(OpaqueScale):
    def forward(self, x):
        return _NoForwardMode.apply(x, self.weight)


def test_forward_mode_failures_of_any_kind_fall_back_to_double_backward():
    """Items and tokens stay exact when forward mode fails with an error no wording list would know."""
    from geffect.effects.tokens import token_effects

    model = tiny_model("gpt2", True)
    model.transformer.ln_f = nn.Sequential(model.transformer.ln_f, NoForwardModeScale(model.config.n_embd))
    layout = discover_layout(model)
    batch, G = tiny_batch(), random_direction(layout)
    _assert_exact(model, batch, G)
    ref_items, ref_tokens = reference_items_and_tokens(model, layout, batch, G)
    tokens = token_effects(model, layout, batch, G)
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=1e-11 * float(ref_items.abs().max()))


def _tracker(**options) -> GEffectTracker:
    return GEffectTracker(TrackerConfig(**options), forget_batches=[], probe_batches=[tiny_batch(3, 8, seed=40)])


def test_instances_on_a_model_the_engine_cannot_split_are_refused_before_training():
    model = tiny_model("llama", False)
    model.model.norm = nn.Sequential(model.model.norm, OpaqueScale(model.config.hidden_size))
    batch = tiny_batch()
    with pytest.raises(UsageError) as refused:
        _tracker(instances=True).check_model(model, batch)
    message = str(refused.value)
    assert "OpaqueScale" in message and "\n" not in message and "--geffect-instances" in message
    assert model.training is False  # the check leaves the mode as it found it
    _tracker(instances=False).check_model(model, batch)  # totals need no split: nothing refused
    assert split_mismatches(tiny_model("gpt2", True), batch) == []


def test_the_cli_refuses_instances_on_such_a_model_before_anything_is_written(tmp_path_factory, monkeypatch, capsys):
    import geffect.training.unlearn as training
    from geffect.cli.main import main
    from geffect.effects.blocks import find_decoder_layers
    from test_training_support import tiny_paths

    data, model_dir = tiny_paths(tmp_path_factory)
    load = training.load_model

    def planted(*args, **kwargs):
        model = load(*args, **kwargs)
        last = find_decoder_layers(model)[1][-1]
        last.mlp = nn.Sequential(OpaqueScale(model.config.hidden_size, model.dtype), last.mlp)
        return model

    monkeypatch.setattr(training, "load_model", planted)
    out = tmp_path_factory.mktemp("refused") / "run"
    argv = ["unlearn", "--model", model_dir, "--data", data, "--out", str(out), "--method", "GA", "--max-steps", "2"]
    capsys.readouterr()
    assert main([*argv, "--no-progress", "--track-geffect", "--geffect-instances"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the lines before it are transformers' loading bar
    assert "per-item G-effects are not exact" in last and "OpaqueScale" in last and "Traceback" not in err
    assert not (out / "config.yaml").exists() and not (out / "geffect.jsonl").exists()


def one_run(tmp_path, model, method: str, config: TrackerConfig, steps: int = 1):
    """A minimal SGD loop calling the tracker as the trainer does; returns the records and the step inputs."""
    name, retain_loss = parse_method_spec(method)
    objective = build_objective(ObjectiveConfig(method=name, retain_loss=retain_loss))
    ref = copy.deepcopy(model).eval()
    tracker = GEffectTracker(
        config, forget_batches=[tiny_batch(3, 8, seed=60)], probe_batches=[tiny_batch(3, 8, seed=40)]
    )
    run = tracker_run(tmp_path, model, objective, ref, steps)
    tracker.on_train_begin(run)
    layout, inputs = discover_layout(model), []
    try:
        for step in range(1, steps + 1):
            batch = UnlearnBatch(forget=tiny_batch(3, 8, seed=step), retain=tiny_batch(3, 8, seed=100 + step))
            out = objective(model, batch, ref)
            out.loss.backward(retain_graph=True)
            G = [p.grad.detach().clone() for p in layout.params]
            inputs.append((batch, G))
            tracker.after_backward(run, StepContext(step=step, lr=1e-3, batch=batch, loss_output=out))
            with torch.no_grad():
                for p, g in zip(layout.params, G):
                    p.sub_(1e-3 * g)
                    p.grad = None
    finally:
        tracker.on_train_end(run)
    return read_jsonl(tmp_path / "geffect.jsonl"), inputs, layout


def test_the_run_time_guard_stops_a_run_whose_items_are_wrong(tmp_path):
    """A closed form right on its first inputs (so it passes the recorder's check) and wrong afterwards: the
    first measured step compares the logged values with plain gradients and stops with the class's name."""
    calls = []

    @register_tangent_rule(ScaledEmbedding)
    def right_once(module, args, kwargs, delta, G):
        calls.append(1)
        rows = nn.functional.embedding(args[0], G["weight"]) * (3.0 if len(calls) == 1 else 1.0)
        rows = rows * (args[0] != module.padding_idx).unsqueeze(-1)
        return {"weight": (rows * delta).reshape(delta.shape[0], -1).sum(1, dtype=torch.float64)}

    try:
        model = tiny_model("llama", False).train()
        _plant_scaled_embedding(model)
        with pytest.raises(UsageError) as stopped:
            one_run(tmp_path, model, "NPO+KL", TrackerConfig(instances=True))
        message = str(stopped.value)
        assert "ScaledEmbedding (model.embed_tokens.weight)" in message and "first measured step" in message
        assert "\n" not in message and len(calls) >= 2
    finally:
        TANGENT_RULES.pop(ScaledEmbedding, None)


@pytest.mark.parametrize("method", ["GA", "NPO+KL"])
def test_with_dropout_items_sum_to_the_total_and_risks_are_measured_without_it(tmp_path, method):
    """OPT with dropout 0.1 in train mode: the step's gradient G carries the masks; the risks are measured in
    eval mode, so items, tokens and totals agree with each other and with eval-mode autograd to 1e-10."""
    model = arch_model("opt", dropout=0.1).train()
    assert dropout_active(model)
    before = copy.deepcopy(model).eval()
    records, inputs, _ = one_run(tmp_path, model, method, TrackerConfig(instances=True, tokens=True))
    assert model.training  # the measurement's eval mode is undone
    record, (batch, G) = records[0], inputs[0]
    layout = discover_layout(before)
    for side, data in (("u", batch.forget), ("r", batch.retain)):
        total = record[f"e_{side}"]["total"]
        items = record[f"items_{side}"]
        assert sum(items.values()) == pytest.approx(total, rel=1e-10)
        for item, tokens in record[f"tokens_{side}"].items():
            assert sum(tokens) == pytest.approx(items[item], rel=1e-10, abs=1e-14)
        ref_items, _ = reference_items_and_tokens(before, layout, data, G, with_tokens=False)
        assert total == pytest.approx(float(ref_items.sum()), rel=1e-10)
        assert [items[str(i)] for i in data["index"].tolist()] == pytest.approx(ref_items.tolist(), rel=1e-9)
