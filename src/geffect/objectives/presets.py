"""Presets: whole sets of method defaults, in one table (DESIGN section 4, docs/presets.md).

- ``geffect`` (the default): the registry's own defaults (each method's `HParam` defaults and default retain
  loss, gamma = alpha = 1, KL averaged over answer tokens).
- ``openunlearning``: locuslab/open-unlearning at d3d7cf9, ``configs/trainer/<Method>.yaml`` (``method_args``)
  and the trainers in ``src/trainer/unlearn/``; e.g. NPO with an NLL retain term and alpha 1.
- ``paper``: tmlr-group/G-effect at ef368ee, ``dataloader.py`` ``CustomTrainerForgetting.compute_loss`` (the
  ``loss_type`` branches without ``_kl``; ``hyper_param`` None); e.g. NPO beta 0.5, WGA beta 5, TNPO's +1e-5.

A preset only supplies defaults: whatever a user gives (``--retain-loss``, ``--gamma``, ``--hparam``) wins. Methods
a reference does not implement keep the ``geffect`` defaults under its preset (`Defaults.source` says so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from geffect.errors import UsageError

PRESETS = ("geffect", "openunlearning", "paper")
DEFAULT_PRESET = "geffect"

OU = "open-unlearning d3d7cf9"
PAPER = "G-effect ef368ee dataloader.py CustomTrainerForgetting.compute_loss"


@dataclass(frozen=True)
class Defaults:
    """What a preset sets for one method; None = the `geffect` value (registry default, gamma/alpha 1, KL on
    answer tokens)."""

    retain_loss: str | None = None
    gamma: float | None = None
    alpha: float | None = None
    kl_mask: str | None = None
    hparams: Mapping[str, float] = field(default_factory=dict)
    source: str = ""


# KL: OpenUnlearning's trainer/utils.py compute_kl_divergence and the paper's kl_div(..., reduction='batchmean')
# both average the per-position KL of the unshifted logits over every position, padding included.
_KL_ALL = "all"
_OU_NLL = dict(retain_loss="NLL", gamma=1.0, alpha=1.0)
# The KL convention is the reference's, whatever the method (a method it lacks, given a KL term, gets its KL).
PRESET_KL_MASK: Mapping[str, str] = MappingProxyType({"geffect": "answer", "openunlearning": _KL_ALL, "paper": _KL_ALL})

TABLE: Mapping[str, Mapping[str, Defaults]] = MappingProxyType(
    {
        "geffect": MappingProxyType({}),
        "openunlearning": MappingProxyType(
            {
                "GradAscent": Defaults(retain_loss="none", source=f"{OU} configs/trainer/GradAscent.yaml"),
                "GradDiff": Defaults(**_OU_NLL, source=f"{OU} configs/trainer/GradDiff.yaml"),
                "NPO": Defaults(**_OU_NLL, hparams={"beta": 0.1}, source=f"{OU} configs/trainer/NPO.yaml"),
                "SimNPO": Defaults(
                    **{**_OU_NLL, "gamma": 0.125},
                    hparams={"beta": 4.5, "delta": 0.0},
                    source=f"{OU} configs/trainer/SimNPO.yaml",
                ),
                "DPO": Defaults(**_OU_NLL, hparams={"beta": 0.1}, source=f"{OU} configs/trainer/DPO.yaml (IdkDPO)"),
                "RMU": Defaults(
                    retain_loss="MSE",
                    gamma=1.0,
                    alpha=1.0,
                    # module_regex model\.layers\.7: the output of decoder layer 7, whatever the depth.
                    hparams={
                        "layer": 7.0,
                        "steering_coeff": 2.0,
                        "normalize": 1.0,
                        "paper_mode": 0.0,
                        "hidden_states_index": 0.0,
                    },
                    source=f"{OU} configs/trainer/RMU.yaml (retain_loss_type EMBED_DIFF)",
                ),
                "WGA": Defaults(**_OU_NLL, hparams={"beta": 1.0}, source=f"{OU} configs/trainer/WGA.yaml"),
                "SatImp": Defaults(
                    **{**_OU_NLL, "gamma": 0.1},
                    hparams={"beta1": 5.0, "beta2": 1.0},
                    source=f"{OU} configs/trainer/SatImp.yaml",
                ),
                # alpha 0 on an NLL term: no retain term at all (the same gradient, one forward pass less).
                "UNDIAL": Defaults(
                    retain_loss="none",
                    gamma=1.0,
                    hparams={"beta": 10.0, "all_positions": 1.0},
                    source=f"{OU} configs/trainer/UNDIAL.yaml (alpha 0); trainer/utils.py compute_undial_loss",
                ),
                "AltPO": Defaults(
                    **_OU_NLL, hparams={"beta": 0.1}, source=f"{OU} community/methods/AltPO/run.sh (trainer DPO)"
                ),
                "PDU": Defaults(
                    **_OU_NLL,
                    hparams={"retain_eps": 0.0, "dual_step_size": 1.0, "primal_dual": 1.0},
                    source=f"{OU} configs/trainer/PDU.yaml (retain_loss_eps required: give --hparam retain_eps=E)",
                ),
                "CEU": Defaults(
                    retain_loss="none",
                    hparams={"ignore_first_n": 1.0},
                    source=f"{OU} configs/trainer/CEU.yaml",
                ),
            }
        ),
        "paper": MappingProxyType(
            {
                "GradAscent": Defaults(retain_loss="none", source=f"{PAPER} loss_type ga"),
                "GradDiff": Defaults(retain_loss="NLL", alpha=1.0, source=f"{PAPER} loss_type gd (gd_coef 1)"),
                "NPO": Defaults(retain_loss="none", hparams={"beta": 0.5}, source=f"{PAPER} loss_type npo"),
                "IdkPO": Defaults(retain_loss="none", source=f"{PAPER} loss_type idk"),
                "WGA": Defaults(retain_loss="none", hparams={"beta": 5.0}, source=f"{PAPER} loss_type wga"),
                "TNPO": Defaults(
                    retain_loss="none",
                    hparams={"beta": 4.0, "eps": 1e-5},
                    source=f"{PAPER} loss_type tnpo",
                ),
                "WTNPO": Defaults(
                    retain_loss="none",
                    hparams={"beta": 4.0, "power": 1.5, "eps": 1e-5},
                    source=f"{PAPER} loss_type wtnpo_1.5",
                ),
                # rmu_32: outputs.hidden_states[32][..., :-1] of a 32-layer Llama (after the final norm), shifted
                # mask, u = torch.rand (not normalised), no retain term. layer -1 = the last hidden state.
                "RMU": Defaults(
                    retain_loss="none",
                    hparams={
                        "layer": -1.0,
                        "steering_coeff": 2.0,
                        "normalize": 0.0,
                        "paper_mode": 1.0,
                        "hidden_states_index": 1.0,
                    },
                    source=f"{PAPER} loss_type rmu_32",
                ),
            }
        ),
    }
)


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return preset


def preset_defaults(preset: str, method_name: str) -> Defaults:
    """The table's row for a canonical method name under `preset` (an empty row: the `geffect` values)."""
    row = TABLE[check_preset(preset)].get(method_name, Defaults())
    return row if row.kl_mask is not None else dataclasses.replace(row, kl_mask=PRESET_KL_MASK[preset])


def effective_defaults(preset: str, method_name: str) -> dict[str, Any]:
    """Every default a method gets under `preset`: retain loss, gamma, alpha, KL mask and every hyper-parameter
    of the method and of that retain loss, with the source of the numbers."""
    from geffect.objectives.registry import get_method, get_retain_loss

    method = get_method(method_name)
    row = preset_defaults(preset, method.name)
    retain = get_retain_loss(row.retain_loss if row.retain_loss is not None else method.default_retain)
    specs = {**method.hparams, **{k: v for k, v in retain.hparams.items() if k not in method.hparams}}
    hparams = {name: float(row.hparams.get(name, spec.default)) for name, spec in specs.items()}
    unknown = sorted(set(row.hparams) - set(specs))
    if unknown:  # a table row naming a hyper-parameter its method lacks is a bug in this module
        raise ValueError(f"preset {preset} sets {unknown} for {method.name}, which has no such hyper-parameter")
    return {
        "preset": preset,
        "method": method.name,
        "retain_loss": retain.name,
        "gamma": 1.0 if row.gamma is None else float(row.gamma),
        "alpha": 1.0 if row.alpha is None else float(row.alpha),
        "kl_mask": "answer" if row.kl_mask is None else row.kl_mask,
        "hparams": hparams,
        "source": row.source
        or ("geffect registry defaults" if preset == "geffect" else "not in this reference: geffect's"),
    }
