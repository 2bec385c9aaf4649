"""RMU (Li et al. 2024, WMDP): steer the hidden states of forget answers towards c * u.

u ~ U[0,1)^d is drawn once per run (setup) and kept in the objective's state for resume; `normalize` = 1 scales
it to unit norm (OpenUnlearning and the WMDP code), 0 keeps it raw (the paper's code). The forget loss is by
default OpenUnlearning's (d3d7cf9, src/trainer/unlearn/rmu.py RMU.compute_activation_loss): for each item, the mean
over its answer positions (labels != -100) of mean_d (h_l - c u)^2, then the mean over items, h_l the output of
decoder layer l (module_regex model\\.layers\\.l). The default retain loss is the hidden-state MSE to the reference
model at the same layer.

`paper_mode` = 1 is the paper's code instead (tmlr-group/G-effect ef368ee, dataloader.py
CustomTrainerForgetting.compute_loss, loss_type rmu_L): ((hidden_states[L][..., :-1, :] - c u)^2).mean(-1) at
the positions where labels[..., 1:] != -100, averaged over all those positions of the batch. `hidden_states_index`
= 1 counts `layer` as an index into HF's hidden_states (0 = embeddings, n = after the final norm; -1 = n), as the
paper's rmu_32 does.
Note: OpenUnlearning also trains only a few MLP weights around layer l in the WMDP code; choosing trainable
parameters is the trainer's business, not the objective's (OpenUnlearning's TOFU config trains all of them).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from geffect.objectives.hidden import activation_mse, hidden_for
from geffect.objectives.spec import (
    ForgetMethod,
    ForgetTerms,
    HParam,
    LossContext,
    boolean,
    layer_index,
    positive,
)
from geffect.objectives.tokens import score_logits, widen
from geffect.tokens import IGNORE_INDEX

LAYER = HParam(
    -1.0,
    layer_index,
    "layer index; -1 = the layer at 7/32 of the depth (7 of 32), or with hidden_states_index the last hidden state",
)
HIDDEN_STATES_INDEX = HParam(
    0.0, boolean, "0: layer = decoder layer whose output is steered (OpenUnlearning); 1: HF hidden_states index (paper)"
)


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        size = model.get_input_embeddings().embedding_dim
    return int(size)


def draw_direction(
    model: nn.Module, generator: torch.Generator, hparams: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    u = torch.rand(_hidden_size(model), generator=generator, dtype=torch.float64)
    if hparams["normalize"]:
        u = u / u.norm()
    return {"u": u}


def paper_distance(hidden: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper code's RMU distance: positions 0..T-2 whose next label is valid, averaged over the batch."""
    sq = (widen(hidden)[:, :-1, :] - target).pow(2).mean(dim=-1)
    mask = (labels[:, 1:] != IGNORE_INDEX).to(sq.device)
    return (sq * mask).sum() / mask.sum().clamp(min=1)


def rmu(ctx: LossContext) -> ForgetTerms:
    if "u" not in ctx.state:
        raise RuntimeError("RMU's random direction is not set: call objective.setup(model, generator) first")
    batch = ctx.batch.forget
    logits, hidden = hidden_for(ctx.model, batch, ctx.hparams)
    target = ctx.hparams["steering_coeff"] * ctx.state["u"].to(device=hidden.device, dtype=widen(hidden).dtype)
    distance = paper_distance if ctx.hparams.get("paper_mode", 0.0) else activation_mse
    loss = distance(hidden, target, batch["labels"])
    return ForgetTerms(loss=loss, risk=score_logits(logits, batch["labels"]).risk())


RMU = ForgetMethod(
    name="RMU",
    compute=rmu,
    hparams={
        "layer": LAYER,
        "steering_coeff": HParam(2.0, positive, "scale c of the random direction"),
        "normalize": HParam(1.0, boolean, "1: u scaled to unit norm (OpenUnlearning); 0: raw U[0,1) (paper code)"),
        "paper_mode": HParam(0.0, boolean, "1: the paper code's distance (shifted positions, mean over the batch)"),
        "hidden_states_index": HIDDEN_STATES_INDEX,
    },
    default_retain="MSE",
    init_state=draw_direction,
    summary="mean_i mean_t mean_d (h_l - c u)^2",
)
