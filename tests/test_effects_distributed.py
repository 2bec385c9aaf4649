"""Two CPU processes (gloo) give the same G-effects as one process with the same batches (acceptance 2)."""

from __future__ import annotations

import functools
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geffect.effects.blocks import discover_layout
from geffect.effects.budget import ActivationBudget
from geffect.effects.dots import all_reduce_max, reduce_partials, tensor_dots
from geffect.effects.engine import gradient_effect, total_tokens
from geffect.effects.reduce import reduce_effect
from test_effects_models import random_direction, tiny_batch, tiny_model


def _batches():
    # Different token counts per rank, so a plain average of the ranks' values would be wrong.
    return [tiny_batch(3, 9, seed=21, first_index=0)], [tiny_batch(2, 8, seed=22, first_index=3)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_model("gpt2", True)
        layout = discover_layout(model)
        G = random_direction(layout)  # replicated, as DDP leaves the averaged objective gradient
        local = gradient_effect(model, layout, _batches()[rank], G)
        data_parallel = reduce_effect(local, "data_parallel")
        # Sharded parameters (FSDP / ZeRO-3): each rank holds one half of every flattened gradient.
        full = gradient_effect(model, layout, _batches()[0] + _batches()[1], G)  # the global risk gradient...
        grads = _risk_gradient(model, layout)
        halves = [
            g.reshape(-1).chunk(world)[rank]
            if g.numel() >= world
            else (g.reshape(-1) if rank == 0 else g.reshape(-1)[:0])
            for g in grads
        ]
        g_halves = [
            d.reshape(-1).chunk(world)[rank]
            if d.numel() >= world
            else (d.reshape(-1) if rank == 0 else d.reshape(-1)[:0])
            for d in G
        ]
        sharded = reduce_partials(tensor_dots(halves, g_halves), "sharded")
        # Micro-batches within an activation budget: the ranks' batches differ, yet they agree on one
        # bytes-per-token figure (so they split alike), and the split changes no number.
        # (Equal item counts: every rank must run as many micro-batches, as the tracker's shared sets do.)
        own = [tiny_batch(3, 9 - 2 * rank, seed=23 + rank, first_index=0)]
        budget = ActivationBudget(
            1.0, layout.params, agree=functools.partial(all_reduce_max, device=torch.device("cpu"))
        )
        with budget.counting():
            split = gradient_effect(model, layout, budget.split(own), G, n_total=total_tokens(own))
        whole = gradient_effect(model, layout, own, G)
        torch.testing.assert_close(split.per_tensor, whole.per_tensor, rtol=1e-12, atol=1e-14)
        torch.save(
            {
                "data_parallel": data_parallel.per_tensor,
                "sharded": sharded,
                "full": full.per_tensor,
                "bytes_per_token": budget.bytes_per_token,
            },
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def _risk_gradient(model, layout):
    from geffect.effects.engine import total_tokens
    from geffect.effects.tokens import risk_terms

    batches = _batches()[0] + _batches()[1]
    n = total_tokens(batches)
    risk = sum(risk_terms(model, b, n)[0] for b in batches)
    return torch.autograd.grad(risk, layout.params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    model = tiny_model("gpt2", True)
    layout = discover_layout(model)
    single = gradient_effect(model, layout, _batches()[0] + _batches()[1], random_direction(layout))
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    assert results[0]["bytes_per_token"] == results[1]["bytes_per_token"] > 0
    for result in results:
        torch.testing.assert_close(result["data_parallel"], single.per_tensor, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result["sharded"], single.per_tensor, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result["full"], single.per_tensor, rtol=1e-12, atol=1e-14)
    local_only = gradient_effect(model, layout, _batches()[0], random_direction(layout))
    assert abs(local_only.total - single.total) > 1e-6  # the reduce did something
