"""Per-step logged numbers: sums over a step's micro-batches on the device, one all-reduce, one host sync.

Losses are the mean over the step's micro-batches of all processes (the quantity whose gradient the step
takes). Risks are token means over the whole step's forget / retain items, and weights are means over
valid answer tokens (token weights) or items (item weights), so every number is that of the global batch
whatever the number of processes.
"""

from __future__ import annotations

import torch

from geffect.objectives.base import LossOutput, UnlearnBatch
from geffect.tokens import valid_tokens


def _valid_tokens(batch: dict) -> torch.Tensor:
    """Number of predicted label tokens (labels shifted by one, as every loss counts them), on the device."""
    return valid_tokens(batch["labels"])


class StepStats:
    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    def add(self, out: LossOutput, batch: UnlearnBatch, forget_risk: torch.Tensor) -> None:
        """Record one micro-batch; `forget_risk` is out.forget_risk or the loop's own no-grad value."""
        device = out.loss.device
        self._add("micro_batches", torch.ones((), device=device))
        self._add("loss", out.loss)
        self._add("forget_loss", out.forget_loss)
        if out.retain_loss is not None:
            self._add("retain_loss", out.retain_loss)
        n_forget = _valid_tokens(batch.forget).to(device)
        self._add("forget_risk", forget_risk.to(device) * n_forget)
        self._add("forget_tokens", n_forget)
        if out.retain_risk is not None and batch.retain is not None:
            n_retain = _valid_tokens(batch.retain).to(device)
            self._add("retain_risk", out.retain_risk.to(device) * n_retain)
            self._add("retain_tokens", n_retain)
        if out.token_weights is not None:
            self._add("token_weight", out.token_weights.to(device).sum())
        if out.item_weights is not None:
            self._add("item_weight", out.item_weights.to(device).sum())
            self._add("items", torch.tensor(float(out.item_weights.numel()), device=device))

    def reduce(self, accelerator=None) -> dict[str, float | None]:
        """Global means of the step (all processes must call this: it all-reduces when distributed)."""
        names = sorted(self._sums)
        values = torch.stack([self._sums[name] for name in names])
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="sum")
        sums = dict(zip(names, values.tolist()))
        micro = sums["micro_batches"]
        record: dict[str, float | None] = {
            "loss": sums["loss"] / micro,
            "forget_loss": sums["forget_loss"] / micro,
            "retain_loss": sums["retain_loss"] / micro if "retain_loss" in sums else None,
            "forget_risk": sums["forget_risk"] / max(sums["forget_tokens"], 1.0),
            "retain_risk": sums["retain_risk"] / max(sums["retain_tokens"], 1.0) if "retain_risk" in sums else None,
        }
        if "token_weight" in sums:
            record["mean_token_weight"] = sums["token_weight"] / max(sums["forget_tokens"], 1.0)
        if "item_weight" in sums:
            record["mean_item_weight"] = sums["item_weight"] / max(sums["items"], 1.0)
        return record
