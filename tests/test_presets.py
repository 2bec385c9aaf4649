"""Presets (objectives/presets.py): every method's effective defaults under each preset equal the references'
values, transcribed here from their sources; a run records the preset and what it resolved to."""

from __future__ import annotations

import json

import pytest
import yaml

from geffect.cli.main import main as geffect_main
from geffect.errors import UsageError
from geffect.io import read_jsonl
from geffect.objectives import ObjectiveConfig, build_objective, method_names
from geffect.objectives.presets import PRESETS, effective_defaults
from test_training_support import tiny_setup

# Written from the sources, not from presets.py: (retain loss, gamma, alpha, kl_mask, hparams that differ from
# geffect's). open-unlearning d3d7cf9 configs/trainer/*.yaml; G-effect ef368ee dataloader.py compute_loss.
OPENUNLEARNING = {
    "GradAscent": ("none", 1.0, 1.0, "all", {}),
    "GradDiff": ("NLL", 1.0, 1.0, "all", {}),
    "NPO": ("NLL", 1.0, 1.0, "all", {"beta": 0.1}),
    "SimNPO": ("NLL", 0.125, 1.0, "all", {"beta": 4.5, "delta": 0.0}),
    "DPO": ("NLL", 1.0, 1.0, "all", {"beta": 0.1}),
    "RMU": ("MSE", 1.0, 1.0, "all", {"layer": 7.0, "steering_coeff": 2.0, "normalize": 1.0}),
    "WGA": ("NLL", 1.0, 1.0, "all", {"beta": 1.0}),
    "SatImp": ("NLL", 0.1, 1.0, "all", {"beta1": 5.0, "beta2": 1.0}),
    "UNDIAL": ("none", 1.0, 1.0, "all", {"beta": 10.0, "all_positions": 1.0}),
    "CEU": ("none", 1.0, 1.0, "all", {"ignore_first_n": 1.0}),
    "PDU": ("NLL", 1.0, 1.0, "all", {"retain_eps": 0.0, "dual_step_size": 1.0, "primal_dual": 1.0}),
    "AltPO": ("NLL", 1.0, 1.0, "all", {"beta": 0.1}),  # community/methods/AltPO/run.sh: trainer DPO
}
PAPER = {
    "GradAscent": ("none", 1.0, 1.0, "all", {}),
    "GradDiff": ("NLL", 1.0, 1.0, "all", {}),
    "NPO": ("none", 1.0, 1.0, "all", {"beta": 0.5}),
    "IdkPO": ("none", 1.0, 1.0, "all", {}),
    "WGA": ("none", 1.0, 1.0, "all", {"beta": 5.0}),
    "TNPO": ("none", 1.0, 1.0, "all", {"beta": 4.0, "eps": 1e-5}),
    "WTNPO": ("none", 1.0, 1.0, "all", {"beta": 4.0, "power": 1.5, "eps": 1e-5}),
    "RMU": (
        "none",
        1.0,
        1.0,
        "all",
        {"layer": -1.0, "steering_coeff": 2.0, "normalize": 0.0, "paper_mode": 1.0, "hidden_states_index": 1.0},
    ),
}
EXPECTED = {"openunlearning": OPENUNLEARNING, "paper": PAPER}


def _geffect(method: str):
    objective = build_objective(ObjectiveConfig(method=method))
    return objective.config


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", method_names())
def test_effective_defaults_equal_the_references(preset, method):
    resolved = build_objective(ObjectiveConfig(method=method, preset=preset)).config
    base = _geffect(method)
    kl = "answer" if preset == "geffect" else "all"
    retain, gamma, alpha, kl_mask, changed = EXPECTED.get(preset, {}).get(method, (base.retain_loss, 1.0, 1.0, kl, {}))
    assert (resolved.retain_loss, resolved.gamma, resolved.alpha, resolved.kl_mask) == (retain, gamma, alpha, kl_mask)
    for name, value in resolved.hparams.items():
        assert value == changed.get(name, base.hparams.get(name)), name
    assert resolved.preset == preset
    table = effective_defaults(preset, method)  # what `geffect methods` prints is what a run gets
    assert {k: table[k] for k in ("retain_loss", "gamma", "alpha", "kl_mask")} == {
        "retain_loss": retain,
        "gamma": gamma,
        "alpha": alpha,
        "kl_mask": kl_mask,
    }
    assert table["hparams"] == dict(resolved.hparams)


def test_given_values_win_over_the_preset():
    config = build_objective(
        ObjectiveConfig(method="SimNPO", preset="openunlearning", retain_loss="KL", gamma=2.0, hparams={"beta": 1.0})
    ).config
    assert (config.retain_loss, config.gamma, config.alpha, config.kl_mask) == ("KL", 2.0, 1.0, "all")
    assert config.hparams == {"beta": 1.0, "delta": 0.0}
    assert build_objective(ObjectiveConfig(method="NPO", preset="paper", kl_mask="answer")).config.kl_mask == "answer"
    with pytest.raises(UsageError, match="unknown preset 'oops'"):
        build_objective(ObjectiveConfig(method="NPO", preset="oops"))


def test_methods_command_prints_the_table(capsys):
    assert geffect_main(["methods", "--preset", "openunlearning", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["method"] for row in rows] == method_names()
    npo = next(row for row in rows if row["method"] == "NPO")
    assert (npo["retain_loss"], npo["alpha"], npo["hparams"]) == ("NLL", 1.0, {"beta": 0.1})
    assert "configs/trainer/NPO.yaml" in npo["source"]
    assert geffect_main(["methods", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def _unlearn(tmp_path, data, model, name, *extra):
    out = tmp_path / name
    argv = ["unlearn", "--model", model, "--data", data, "--forget", "forget10", "--method", "NPO"]
    argv += ["--out", str(out), "--epochs", "1", "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1"]
    argv += ["--lr", "1e-3", "--no-progress", "--track-geffect", "--geffect-scatter", *extra]
    assert geffect_main(argv) == 0
    return yaml.safe_load((out / "config.yaml").read_text()), read_jsonl(out / "geffect.jsonl")


def test_openunlearning_npo_run_has_the_nll_retain_term(tmp_path, tmp_path_factory):
    """Acceptance 3: the config records NLL with alpha 1, and the measured G includes the retain term's gradient:
    the per-forget-item parts of e_r no longer add up to its total (the rest is the retain term's part)."""
    data, model = tiny_setup(str(tmp_path_factory.getbasetemp() / "training_tiny"))
    config, lines = _unlearn(tmp_path, data, model, "ou", "--preset", "openunlearning")
    objective = config["resolved"]["objective"]
    assert config["options"]["preset"] == "openunlearning"
    assert (objective["retain_loss"], objective["alpha"], objective["gamma"]) == ("NLL", 1.0, 1.0)
    assert objective["preset"] == "openunlearning" and objective["hparams"] == {"beta": 0.1}
    assert len(lines) == 2
    for line in lines:  # without a retain term the parts sum to the total (docs/geffect-format.md, objective_items)
        parts = sum(item["e_r"] for item in line["objective_items"].values())
        assert abs(parts - line["e_r"]["total"]) > 1e-3 * abs(line["e_r"]["total"])


def test_docs_hold_the_generated_table():
    """Acceptance 4: docs/presets.md shows the three presets side by side as `geffect methods --markdown` prints."""
    from pathlib import Path

    from geffect.cli.methods import markdown_tables

    text = (Path(__file__).parents[1] / "docs" / "presets.md").read_text(encoding="utf-8")
    start = text.index("<!-- generated by: geffect methods --markdown -->\n") + len(
        "<!-- generated by: geffect methods --markdown -->\n"
    )
    assert text[start : text.index("<!-- end generated -->")] == markdown_tables()
    for convention in ("`geffect`", "`openunlearning`", "`legacy`"):
        assert convention in text
