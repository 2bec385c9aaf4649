"""Contracts between objectives, the trainer and the G-effect engine.

An objective never knows about G-effects; it returns its loss plus the detached quantities the trainer
logs (risks, weights). The risks are kept attached to the step's graph so that the G-effect tracker can
reuse the step's forward passes instead of running new ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geffect.tokens import Batch


@dataclass
class UnlearnBatch:
    forget: Batch
    retain: Batch | None = None
    # The forget questions with a refusal answer ("I don't know"-style), for IdkPO and IdkDPO.
    forget_idk: Batch | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor  # gamma * forget_loss + alpha * retain_loss, attached
    forget_loss: torch.Tensor  # attached
    retain_loss: torch.Tensor | None = None  # attached; None when the retain loss is "none"
    # Mean token NLL of batch.forget / batch.retain under the model, attached to the step's graph, or None
    # when the objective did not run that batch with the original answers through the model.
    forget_risk: torch.Tensor | None = None
    retain_risk: torch.Tensor | None = None
    # Detached weights the objective put on the forget batch: per token [B, T] (0 where labels == -100)
    # and/or per item [B]. None for unweighted objectives.
    token_weights: torch.Tensor | None = None
    item_weights: torch.Tensor | None = None
