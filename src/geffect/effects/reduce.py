"""The distributed reduction of one measured step's G-effects (one all-reduce of each per-tensor vector).

- `none`: one process (or values already global): nothing to do.
- `data_parallel` (DDP): G is replicated, but each rank measured its own items against its own token count:
  the per-tensor values become the token-weighted mean over ranks (`dots.reduce_partials`), and the risk,
  the token count and the per-item (per-token) contributions are gathered and rescaled to the union's count.
- `sharded` (FSDP, ZeRO-3): each rank holds a slice of every gradient: the partial dots are summed.

The EMA's smoothed values are dots of replicated averages under DDP, each rank's own estimate: only
`sharded` reduces them.
"""

from __future__ import annotations

from typing import Mapping

import torch

from geffect.effects.dots import Breakdown, reduce_partials
from geffect.effects.engine import SetEffect


def reduce_effect(effect: SetEffect, mode: str, device: torch.device | None = None) -> SetEffect:
    """One side's G-effect over all processes (the per-tensor vector reduced on `device`)."""
    if mode == "none":
        return effect
    vector = reduce_partials(
        effect.per_tensor.to(device or effect.per_tensor.device), mode, weight=float(effect.n_tokens)
    ).cpu()
    items, tokens, n_total = effect.items, effect.tokens, effect.n_tokens
    if mode == "data_parallel":
        # Each rank measured its own items against its own token count: rescale to the union's count.
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (effect.n_tokens, effect.risk, items, tokens))
        n_total = sum(g[0] for g in gathered)
        risk = sum(g[0] * g[1] for g in gathered) / max(n_total, 1)
        items = None if items is None else {k: v * g[0] / n_total for g in gathered for k, v in g[2].items()}
        tokens = (
            None if tokens is None else {k: [x * g[0] / n_total for x in v] for g in gathered for k, v in g[3].items()}
        )
        return SetEffect(vector, effect.layout, risk, n_total, items, tokens, effect.item_tokens)
    return SetEffect(vector, effect.layout, effect.risk, n_total, items, tokens, effect.item_tokens)


def reduce_step(
    effects: Mapping[str, SetEffect], ema: Mapping[str, Breakdown] | None, mode: str, device: torch.device
) -> tuple[dict[str, SetEffect], dict[str, Breakdown] | None]:
    """A measured step's effects (side "u", then "r") and EMA values ("e_u", "e_r") over all processes."""
    reduced = {side: reduce_effect(effects[side], mode, device) for side in ("u", "r")}
    if ema is not None and mode == "sharded":
        ema = {
            k: Breakdown(reduce_partials(v.per_tensor.to(device), "sharded").cpu(), v.layout) for k, v in ema.items()
        }
    return reduced, ema
