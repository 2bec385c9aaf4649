"""G-effects of a direction G on a data set: totals per tensor, per item, per token.

    e(D) = grad R(D) . G,   R(D) = (1/N) sum_{i,t} ce_{i,t} over the N valid label tokens of D.

The engine knows nothing about objectives: G is any gradient-shaped direction aligned with a
`ParameterLayout` (typically the objective's gradient, `param_grads(layout)` after the step's backward).
Over several batches the dot product is linear, so e(D) = sum_b grad(sum_b ce / N) . G: a whole set costs
one forward and one backward per batch and never more than one gradient in memory (none at all with the
ghost path, which computes the dots inside the backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from geffect.effects.blocks import ParameterLayout
from geffect.effects.dots import Breakdown, streamed_dots, tensor_dots
from geffect.effects.ghost import GhostPass, GhostRecorder
from geffect.effects.tokens import count_tokens, risk_terms, token_effects
from geffect.tokens import Batch


@dataclass
class SetEffect:
    """The G-effect of one direction on one data set."""

    per_tensor: torch.Tensor  # [n_tensors] float64 on the host
    layout: ParameterLayout
    risk: float  # R(D), mean token NLL over the set
    n_tokens: int
    items: dict[int, float] | None = None  # item id -> c_i
    tokens: dict[int, list[float]] | None = None  # item id -> c_{i,t} over the item's label tokens, in order
    item_tokens: dict[int, int] = field(default_factory=dict)  # item id -> n_i
    gradient: list[torch.Tensor | None] | None = None  # grad R(D) itself, when asked for (a direction)

    @property
    def breakdown(self) -> Breakdown:
        return Breakdown(self.per_tensor, self.layout)

    @property
    def total(self) -> float:
        return float(self.per_tensor.sum())


def total_tokens(batches: Iterable[Batch]) -> int:
    return sum(count_tokens(b["labels"]) for b in batches)


def _item_ids(batch: Batch) -> list[int]:
    if "index" in batch:
        return [int(i) for i in batch["index"]]
    return list(range(batch["labels"].shape[0]))


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gradient_effect(
    model: nn.Module,
    layout: ParameterLayout,
    batches: Sequence[Batch],
    G: list[torch.Tensor | None],
    n_total: int | None = None,
    dtype: torch.dtype = torch.float64,
    stream: bool = False,
) -> SetEffect:
    """e(D) per tensor from plain risk gradients, one batch (and one gradient) at a time; with `stream` (a
    single-process model, see `streamed_dots`) one parameter's gradient at a time. Pass `n_total` when
    `batches` is a generator (the token count of the whole set scales every batch's risk)."""
    n_total = n_total or total_tokens(batches)
    device = _device(model)
    per_tensor = torch.zeros(len(layout), dtype=dtype, device=device)
    risk_sum = 0.0
    for batch in batches:
        batch = _to_device(batch, device)
        with torch.enable_grad():
            risk, _, _ = risk_terms(model, batch, n_total)
            if stream:
                per_tensor += streamed_dots(risk, layout.params, G, dtype, retain_graph=False)
            else:
                grads = torch.autograd.grad(risk, layout.params, allow_unused=True)
                per_tensor += tensor_dots(grads, G, dtype)
                del grads
        risk_sum += float(risk.detach())
    return SetEffect(per_tensor=per_tensor.cpu(), layout=layout, risk=risk_sum, n_tokens=n_total)


def split_tokens(values: torch.Tensor, labels: torch.Tensor, ids: list[int]) -> dict[int, list[float]]:
    mask = labels != -100
    mask[:, 0] = False  # the first token is never predicted
    host, mask = values.cpu(), mask.cpu()
    return {item: host[row][mask[row]].tolist() for row, item in enumerate(ids)}


def ghost_effect(
    model: nn.Module,
    layout: ParameterLayout,
    batches: Sequence[Batch],
    G: list[torch.Tensor | None],
    n_total: int | None = None,
    tokens: bool = False,
    recorder: GhostRecorder | None = None,
    keep_gradient: bool = False,
) -> SetEffect:
    """e(D) per tensor and per item (ghost dot products), and per token on request (forward mode).
    `keep_gradient` also returns grad R(D) (`SetEffect.gradient`, one gradient of memory) from the same backwards."""
    n_total = n_total or total_tokens(batches)
    device = _device(model)
    own_recorder = recorder is None
    recorder = recorder or GhostRecorder(model, layout)
    per_tensor = torch.zeros(len(layout), dtype=torch.float64, device=device)
    items: dict[int, float] = {}
    token_map: dict[int, list[float]] = {}
    item_tokens: dict[int, int] = {}
    risk_sum = 0.0
    gradient: list[torch.Tensor | None] | None = None
    try:
        for batch in batches:
            batch = _to_device(batch, device)
            ids = _item_ids(batch)
            mark = recorder.forward_count  # a shared recorder may hold other forwards' captures: keep them
            with torch.enable_grad(), recorder.recording():
                risk, ce, _ = risk_terms(model, batch, n_total)
            result = recorder.backward(risk, G, batch_size=len(ids), with_grads=keep_gradient)
            recorder.release_after(mark)
            if keep_gradient:
                gradient = (
                    result.grads
                    if gradient is None
                    else [a if b is None else b if a is None else a + b for a, b in zip(gradient, result.grads)]
                )
            per_tensor += result.per_tensor
            risk_sum += float(risk.detach())
            batch_items, batch_counts, batch_tokens = item_effects(model, layout, batch, G, n_total, result, tokens)
            for item, value in batch_items.items():
                items[item] = items.get(item, 0.0) + value
                item_tokens[item] = item_tokens.get(item, 0) + batch_counts[item]
            if tokens:
                token_map.update(batch_tokens)
    finally:
        if own_recorder:
            recorder.remove()
    return SetEffect(
        per_tensor=per_tensor.cpu(),
        layout=layout,
        risk=risk_sum,
        n_tokens=n_total,
        items=items,
        tokens=token_map if tokens else None,
        item_tokens=item_tokens,
        gradient=gradient,
    )


def item_effects(
    model: nn.Module,
    layout: ParameterLayout,
    batch: Batch,
    G: list,
    n_total: int,
    result: GhostPass,
    tokens: bool = False,
) -> tuple[dict[int, float], dict[int, int], dict[int, list[float]] | None]:
    """One batch's per-item contributions from its ghost pass, keyed by item id: (c_i, the item's number of
    loss tokens, and with `tokens` its per-token contributions c_{i,t} from a forward-mode pass)."""
    ids = _item_ids(batch)
    values = item_contributions(model, layout, batch, G, n_total, result).tolist()
    counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
    token_map = split_tokens(token_effects(model, layout, batch, G, n_total), batch["labels"], ids) if tokens else None
    return dict(zip(ids, values)), dict(zip(ids, counts)), token_map


def item_contributions(
    model: nn.Module, layout: ParameterLayout, batch: Batch, G: list, n_total: int, result: GhostPass
) -> torch.Tensor:
    """Per-item totals [B] float64 from a ghost pass; tensors it could not itemise go through forward mode."""
    if not result.unitemised_tensors:
        return result.items
    only = set(result.unitemised_tensors)
    keep = torch.ones(len(layout), dtype=torch.bool, device=result.per_item.device)
    keep[list(only)] = False
    fallback = token_effects(model, layout, batch, G, n_total, only=only).sum(1)
    return result.per_item[keep].sum(0) + fallback
