"""Which items go into which micro-batch: forget items paired with random retain items, sharded over processes.

The order of a whole epoch is drawn from `(seed, epoch)` alone, identically on every rank, so a run sees the
same items in the same optimizer steps whatever the number of processes, and the data position of a run is
fully described by its step counter (resume needs nothing else).

Layout of one optimizer step: a global batch of `batch_size * grad_accum * world_size` slots of the epoch's
order, cut into chunks of `batch_size`; micro-step m of rank r takes chunk `m * world_size + r`. The step's
loss is the mean of the chunk losses, so one process with `grad_accum = K * W` and W processes with
`grad_accum = K` take identical steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from geffect.data.collate import EncodedItem, collate, encode_qa
from geffect.data.templates import Template
from geffect.objectives.base import Batch, UnlearnBatch


def encode_records(
    tokenizer,
    template: Template,
    records: Sequence[dict],
    max_length: int,
    answer_for: Callable[[int, dict], str] | None = None,
) -> list[EncodedItem]:
    """Encode QA records; `index` is the record's position in its split. `answer_for(i, record)` replaces the
    answer (refusals for IdkPO/DPO)."""
    return [
        encode_qa(
            tokenizer,
            template,
            record["question"],
            record["answer"] if answer_for is None else answer_for(i, record),
            index=i,
            max_length=max_length,
        )
        for i, record in enumerate(records)
    ]


@dataclass(frozen=True)
class MicroBatch:
    forget: np.ndarray  # indices into the forget split
    retain: np.ndarray  # indices into the retain split, paired slot by slot


class StepSampler:
    """Deterministic plan of every optimizer step's micro-batches for one rank."""

    def __init__(self, n_forget: int, n_retain: int, batch_size: int, grad_accum: int, world_size: int, seed: int):
        if n_forget < 1 or n_retain < 1:
            raise ValueError("need at least one forget and one retain item")
        self.n_forget, self.n_retain = n_forget, n_retain
        self.batch_size, self.grad_accum, self.world_size = batch_size, grad_accum, world_size
        self.seed = seed
        self.global_batch = batch_size * grad_accum * world_size
        # The last step of an epoch is filled by wrapping around the epoch's order (as DistributedSampler
        # pads), so every micro-batch has the same size and every process the same number of micro-steps.
        self.steps_per_epoch = -(-n_forget // self.global_batch)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(forget order, paired retain items) of one epoch, `steps_per_epoch * global_batch` slots each."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n_forget)
            slots = self.steps_per_epoch * self.global_batch
            order = np.resize(order, slots)  # repeats from the start when slots > n_forget
            retain = rng.integers(0, self.n_retain, size=slots)
            self._cached = (epoch, order, retain)
        return self._cached[1], self._cached[2]

    def epoch_of(self, step: int) -> int:
        """0-based epoch of the 0-based optimizer step `step`."""
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[MicroBatch]:
        """The `grad_accum` micro-batches of rank `rank` in the 0-based optimizer step `step`."""
        order, retain = self.epoch_order(self.epoch_of(step))
        start = (step % self.steps_per_epoch) * self.global_batch
        out = []
        for micro in range(self.grad_accum):
            chunk = micro * self.world_size + rank
            lo = start + chunk * self.batch_size
            out.append(MicroBatch(order[lo : lo + self.batch_size], retain[lo : lo + self.batch_size]))
        return out


class BatchBuilder:
    """Collates encoded items into an `UnlearnBatch` on the training device."""

    def __init__(
        self,
        forget: Sequence[EncodedItem],
        retain: Sequence[EncodedItem],
        pad_id: int,
        device: torch.device,
        forget_idk: Sequence[EncodedItem] | None = None,
    ):
        self.forget, self.retain, self.forget_idk = forget, retain, forget_idk
        self.pad_id, self.device = pad_id, device

    def _collate(self, items: Sequence[EncodedItem], ids: np.ndarray) -> Batch:
        batch = collate([items[i] for i in ids.tolist()], self.pad_id)
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def build(self, micro: MicroBatch) -> UnlearnBatch:
        return UnlearnBatch(
            forget=self._collate(self.forget, micro.forget),
            retain=self._collate(self.retain, micro.retain),
            forget_idk=None if self.forget_idk is None else self._collate(self.forget_idk, micro.forget),
        )
