"""Registry, configuration and validation of the objectives API."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from geffect.errors import UsageError
from geffect.objectives import (
    ObjectiveConfig,
    UnlearnBatch,
    build_objective,
    method_aliases,
    method_names,
    parse_method_spec,
    retain_loss_names,
)

DEFAULTS = {
    # method: (hparams, default retain loss, needs_reference, needs_idk, weighted)
    "GradAscent": ({}, "none", False, False, False),
    "GradDiff": ({}, "NLL", False, False, False),
    "NPO": ({"beta": 0.1}, "none", True, False, True),
    "SimNPO": ({"beta": 4.5, "delta": 0.0}, "none", False, False, True),
    "IdkPO": ({}, "none", False, True, False),
    "DPO": ({"beta": 0.1}, "none", True, True, True),
    "RMU": (
        {"layer": -1.0, "steering_coeff": 2.0, "normalize": 1.0, "paper_mode": 0.0, "hidden_states_index": 0.0},
        "MSE",
        True,
        False,
        False,
    ),
    "WGA": ({"beta": 1.0}, "none", False, False, True),
    "TNPO": ({"beta": 4.0, "eps": 0.0}, "none", True, False, True),
    "WTNPO": ({"beta": 4.0, "power": 1.5, "eps": 0.0}, "none", True, False, True),
    "SatImp": ({"beta1": 5.0, "beta2": 1.0}, "none", False, False, True),
    "UNDIAL": ({"beta": 10.0, "all_positions": 0.0}, "none", True, False, False),
    "CEU": ({"ignore_first_n": 1.0}, "none", False, False, False),
    "PDU": (
        {"retain_eps": 0.0, "dual_step_size": 1.0, "primal_dual": 1.0, "dual_warmup_calls": 0.0},
        "NLL",
        False,
        False,
        False,
    ),
    "AltPO": ({"beta": 0.1}, "none", True, True, True),
}


def test_method_names_and_aliases():
    assert method_names() == list(DEFAULTS)
    assert method_aliases() == {"GA": "GradAscent", "GD": "GradDiff", "PO": "IdkPO", "IdkDPO": "DPO", "CE-U": "CEU"}
    assert retain_loss_names() == ["none", "NLL", "KL", "MSE"]


@pytest.mark.parametrize("method", list(DEFAULTS))
def test_defaults_and_flags(method):
    hparams, retain, needs_ref, needs_idk, weighted = DEFAULTS[method]
    objective = build_objective(ObjectiveConfig(method=method.lower()))  # names are case-insensitive
    assert objective.name == method and objective.config.method == method
    assert dict(objective.config.hparams) == hparams
    assert objective.config.retain_loss == retain
    assert (objective.needs_reference, objective.needs_idk, objective.weighted) == (needs_ref, needs_idk, weighted)
    assert objective.needs_retain == (retain != "none")
    assert (objective.config.gamma, objective.config.alpha, objective.config.kl_mask) == (1.0, 1.0, "answer")


def test_retain_loss_changes_flags():
    assert build_objective(ObjectiveConfig(method="GA", retain_loss="KL")).needs_reference
    assert not build_objective(ObjectiveConfig(method="GD", retain_loss="none")).needs_retain
    assert build_objective(ObjectiveConfig(method="NPO", retain_loss="gd")).config.retain_loss == "NLL"
    mse = build_objective(ObjectiveConfig(method="GA", retain_loss="MSE", hparams={"layer": 1}))
    assert mse.needs_reference and mse.config.hparams == {"layer": 1.0, "hidden_states_index": 0.0}


def test_parse_method_spec():
    assert parse_method_spec("NPO+KL") == ("NPO", "KL")
    assert parse_method_spec("GradDiff") == ("GradDiff", None)
    assert parse_method_spec(" wga + gd ") == ("wga", "NLL")
    assert parse_method_spec("RMU+mse") == ("RMU", "MSE")
    for bad in ["", "NPO+", "+KL", "NPO+KL+NLL", "FOO", "NPO+L2"]:
        with pytest.raises(UsageError):
            parse_method_spec(bad)


@pytest.mark.parametrize(
    "config,message",
    [
        (ObjectiveConfig(method="Foo"), "unknown unlearning method 'Foo'"),
        (ObjectiveConfig(method="NPO", hparams={"beta": 0.0}), "NPO beta=0 must be > 0"),
        (ObjectiveConfig(method="NPO", hparams={"beta": -1}), "must be > 0"),
        (ObjectiveConfig(method="SimNPO", hparams={"beta": float("nan")}), "must be finite"),
        (ObjectiveConfig(method="SatImp", hparams={"beta": 1.0}), "unknown hyper-parameter 'beta'"),
        (ObjectiveConfig(method="WTNPO", hparams={"alpha": 1.5}), "unknown hyper-parameter 'alpha'"),
        (ObjectiveConfig(method="GA", hparams={"layer": 1}), "unknown hyper-parameter 'layer'"),
        (ObjectiveConfig(method="RMU", hparams={"layer": 1.5}), "layer"),
        (ObjectiveConfig(method="RMU", hparams={"normalize": 2}), "must be 0 or 1"),
        (ObjectiveConfig(method="NPO", hparams={"beta": "x"}), "must be a number"),
        (ObjectiveConfig(method="NPO", retain_loss="L2"), "unknown retain loss 'L2'"),
        (ObjectiveConfig(method="NPO", kl_mask="some"), "unknown kl_mask"),
        (ObjectiveConfig(method="NPO", alpha=float("inf")), "alpha must be finite"),
    ],
)
def test_bad_config_is_a_one_line_usage_error(config, message):
    with pytest.raises(UsageError, match=message) as info:
        build_objective(config)
    assert "\n" not in str(info.value)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 9, 10, 11]])
    return {
        "input_ids": ids,
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, 10, 11]]),
        "index": torch.tensor([0, 1]),
    }


def test_missing_inputs_are_reported():
    model = tiny_llama()
    with pytest.raises(ValueError, match="reference model"):
        build_objective(ObjectiveConfig(method="NPO"))(model, UnlearnBatch(forget=batch()))
    with pytest.raises(ValueError, match="batch.retain"):
        build_objective(ObjectiveConfig(method="GD"))(model, UnlearnBatch(forget=batch()))
    with pytest.raises(ValueError, match="forget_idk"):
        build_objective(ObjectiveConfig(method="IdkPO"))(model, UnlearnBatch(forget=batch()))
    with pytest.raises(UsageError, match="out of range"):
        rmu = build_objective(ObjectiveConfig(method="RMU", hparams={"layer": 5}))
        rmu.setup(model, torch.Generator().manual_seed(0))
        rmu(model, UnlearnBatch(forget=batch(), retain=batch()), model)


def test_state_dict_round_trip_and_stateless_methods():
    model = tiny_llama()
    npo = build_objective(ObjectiveConfig(method="NPO"))
    npo.setup(model, torch.Generator().manual_seed(0))
    assert npo.state_dict() == {}
    npo.load_state_dict({})
    with pytest.raises(ValueError):
        npo.load_state_dict({"u": torch.zeros(16)})
    rmu = build_objective(ObjectiveConfig(method="RMU"))
    rmu.setup(model, torch.Generator().manual_seed(0))
    state = rmu.state_dict()
    state["u"].zero_()  # state_dict returns copies
    assert rmu.state_dict()["u"].abs().sum() > 0


def test_float32_model_end_to_end_backward():
    model = tiny_llama()
    ref = tiny_llama().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    for method in method_names():
        objective = build_objective(ObjectiveConfig(method=method, retain_loss="KL" if method != "RMU" else None))
        objective.setup(model, generator)
        out = objective(model, UnlearnBatch(forget=batch(), retain=batch(), forget_idk=batch()), ref)
        out.loss.backward()
        assert torch.isfinite(out.loss), method
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()), method
        assert all(p.grad is None for p in ref.parameters()), method
        if out.token_weights is not None:
            assert out.token_weights.shape == batch()["labels"].shape
            assert (out.token_weights[batch()["labels"] == -100] == 0).all() and not out.token_weights.requires_grad
        model.zero_grad()
