"""Per-item gradients of the risk (each item's own mean token NLL), for `orthograd`.

Two ways, same numbers: `vmap` (torch.func: vmap of grad over the items, one batched pass) and `loop` (one
backward per item). benchmarks/bench_trainer.py measures both; `vmap` falls back to `loop` for a model that
torch.func cannot trace (data-dependent control flow in its forward). The project's ghost machinery
(effects/ghost.py) gives per-item dot products with a fixed direction, not the per-item Gram matrix a
projection onto the span needs, so it is not one of the ways.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from geffect.effects.tokens import math_attention, risk_terms, token_nll
from geffect.tokens import IGNORE_INDEX, Batch
from geffect.updates.passes import gradient

log = logging.getLogger(__name__)
WAYS = ("vmap", "loop")


def _item(batch: Batch, i: int) -> Batch:
    return {k: v[i : i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() > 0}


def per_item_loop(model: nn.Module, params: list[nn.Parameter], batch: Batch) -> list[torch.Tensor]:
    """[B, *shape] per tensor: the gradient of each item's mean NLL, one backward per item."""
    rows = [gradient(risk_terms(model, _item(batch, i))[0], params) for i in range(batch["labels"].shape[0])]
    return [torch.stack([row[k] for row in rows]) for k in range(len(params))]


def _mask_4d(item: Batch, dtype: torch.dtype) -> torch.Tensor:
    """The additive causal-and-padding mask [1, 1, T, T] the model would build from the 2-D one."""
    keys = item["attention_mask"].bool()
    T = keys.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=keys.device).tril()
    allowed = causal[None, None] & keys[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=keys.device)
    return torch.where(allowed, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype, device=keys.device))


class _ItemRisk(nn.Module):
    """One item's mean NLL as a module around the model, for `torch.func.functional_call`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dtype = next(model.parameters()).dtype

    def forward(self, item: Batch) -> torch.Tensor:
        # every position's logits: the answer-only shortcut of `risk_terms` reads the labels' values (no vmap)
        # and a 4-D mask of our own: transformers' mask builder branches on the mask's values (no vmap either)
        logits = self.model(
            input_ids=item["input_ids"], attention_mask=_mask_4d(item, self.dtype), use_cache=False
        ).logits
        ce = token_nll(logits, item["labels"])
        return ce.sum() / (item["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)


def per_item_vmap(model: nn.Module, params: list[nn.Parameter], batch: Batch) -> list[torch.Tensor]:
    """As `per_item_loop`, by torch.func.vmap of torch.func.grad over the items."""
    names = [f"model.{name}" for name, p in model.named_parameters() if p.requires_grad]
    keys = [k for k in ("input_ids", "attention_mask", "labels") if k in batch]
    call = _ItemRisk(model)

    def item_risk(values, *rows):
        item = {k: row.unsqueeze(0) for k, row in zip(keys, rows)}
        return torch.func.functional_call(call, dict(zip(names, values)), (item,))

    with math_attention():  # the fused CPU attention kernels have no batching rule (vmap would loop over them)
        grads = torch.func.vmap(torch.func.grad(item_risk), in_dims=(None, *([0] * len(keys))), randomness="different")(
            tuple(p.detach() for p in params), *(batch[k] for k in keys)
        )
    return list(grads)


def per_item_gradients(model: nn.Module, params: list[nn.Parameter], batch: Batch, way: str) -> list[torch.Tensor]:
    """Per-item risk gradients [B, *shape] per tensor, by `way` (vmap falls back to the loop)."""
    if way == "vmap":
        try:
            return per_item_vmap(model, params, batch)
        except RuntimeError as err:  # torch.func cannot trace this forward
            log.warning("per-item gradients: vmap failed (%s); using one backward per item", str(err).splitlines()[0])
    return per_item_loop(model, params, batch)
