"""Micro-batches for the tracker's own forwards, sized to an activation-memory budget.

A risk the step did not compute (GA's retain probe; the `full` estimator's sets) needs a forward and a
backward of its own, while the step's gradient (and often its graph) is still held. The activations that
forward keeps for its backward grow with items x tokens, and on a real model they dwarf a gradient copy
(a 7B model keeps megabytes per token). So those forwards run in micro-batches whose saved activations stay
under a budget: the bytes autograd saves are counted (saved-tensor hooks, parameters excluded), the first
micro-batch of each batch has one item until a bytes-per-token figure exists, and each later micro-batch is
as large as that figure allows. Results do not depend on the split: the risk of every micro-batch is scaled
by the token count of the whole batch, and dot products are linear.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from geffect.tokens import Batch


def storage_key(tensor: torch.Tensor) -> int:
    """The address of the tensor's storage (0 for wrapper tensors that own none): views share it."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # wrapper tensors own no storage
        return 0


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows start..stop-1 of every per-item tensor (and list) of a collated batch."""
    rows = batch["labels"].shape[0]
    out = {}
    for key, value in batch.items():
        if isinstance(value, (torch.Tensor, list, tuple)) and len(value) == rows:
            out[key] = value[start:stop]
        else:
            out[key] = value
    return out


class ActivationBudget:
    """Splits batches so that one micro-batch's saved activations stay under `limit_bytes`.

    Use `counting()` around the code that runs the forwards, and iterate `micro_batches(batch)` inside it:
    the generator reads the bytes saved since its last yield to learn the bytes per token. `agree` maps a
    measured figure to one all processes share (the maximum over ranks), so that every rank splits alike and
    runs the same number of forwards (a DDP forward may hold a collective); the ranks must then split batches
    with equal item counts (the tracker's probe and sets are the same on every rank).
    """

    def __init__(
        self, limit_bytes: float, params: Sequence[torch.Tensor], agree: Callable[[float], float] | None = None
    ):
        self.limit_bytes = float(limit_bytes)
        self.agree = agree
        self.bytes_per_token: float | None = None
        self._parameters = {storage_key(p) for p in params}
        self._seen: set[int] = set()
        self._saved = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key and key not in self._parameters and key not in self._seen:
            self._seen.add(key)
            self._saved += tensor.untyped_storage().nbytes()
        return tensor

    @contextmanager
    def counting(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield

    def items_per_micro_batch(self, tokens_per_item: int) -> int:
        if self.limit_bytes <= 0:
            return 0  # no limit: the whole batch
        if self.bytes_per_token is None:
            return 1  # measure on one item first
        return max(1, int(self.limit_bytes // max(self.bytes_per_token * tokens_per_item, 1.0)))

    def micro_batches(self, batch: Batch) -> Iterator[Batch]:
        rows, length = batch["labels"].shape[0], batch["labels"].shape[1]
        start = 0
        while start < rows:
            left = rows - start
            largest = min(self.items_per_micro_batch(length) or left, left)
            size = math.ceil(
                left / math.ceil(left / largest)
            )  # as few micro-batches, of even sizes: [2, 2], not [3, 1]
            stop = start + size
            self._seen.clear()
            self._saved = 0
            yield slice_batch(batch, start, stop) if (start, stop) != (0, rows) else batch
            if self.limit_bytes > 0:
                measured = self._saved / ((stop - start) * length)
                if self.agree is not None:
                    measured = self.agree(measured)
                if measured > 0:
                    self.bytes_per_token = max(self.bytes_per_token or 0.0, measured)
            start = stop

    def split(self, batches: Sequence[Batch]) -> Iterator[Batch]:
        for batch in batches:
            yield from self.micro_batches(batch)
