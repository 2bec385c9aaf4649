"""RMU (Li et al. 2024, WMDP): steer the layer-l hidden states of forget answers towards c * u.

u ~ U[0,1)^d is drawn once per run (setup) and kept in the objective's state for resume; `normalize` = 1 scales
it to unit norm (OpenUnlearning and the WMDP code), 0 keeps it raw. The forget loss is OpenUnlearning's: for each
item, the mean over its answer positions (labels != -100) of mean_d (h_l - c u)^2, then the mean over items.
The default retain loss is the hidden-state MSE to the reference model at the same layer.
Note: OpenUnlearning also trains only a few MLP weights around layer l; choosing trainable parameters is the
trainer's business, not the objective's.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from geffect.objectives.hidden import activation_mse, forward_with_hidden, resolve_layer
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

LAYER = HParam(-1.0, layer_index, "decoder layer index; -1 = the layer at 7/32 of the depth (7 of 32)")


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


def rmu(ctx: LossContext) -> ForgetTerms:
    if "u" not in ctx.state:
        raise RuntimeError("RMU's random direction is not set: call objective.setup(model, generator) first")
    layer = resolve_layer(ctx.model, int(ctx.hparams["layer"]))
    batch = ctx.batch.forget
    logits, hidden = forward_with_hidden(ctx.model, batch, layer)
    target = ctx.hparams["steering_coeff"] * ctx.state["u"].to(device=hidden.device, dtype=widen(hidden).dtype)
    loss = activation_mse(hidden, target, batch["labels"])
    return ForgetTerms(loss=loss, risk=score_logits(logits, batch["labels"]).risk())


RMU = ForgetMethod(
    name="RMU",
    compute=rmu,
    hparams={
        "layer": LAYER,
        "steering_coeff": HParam(2.0, positive, "scale c of the random direction"),
        "normalize": HParam(1.0, boolean, "1: u scaled to unit norm (OpenUnlearning); 0: raw U[0,1) (paper code)"),
    },
    default_retain="MSE",
    init_state=draw_direction,
    summary="mean_i mean_t mean_d (h_l - c u)^2",
)
