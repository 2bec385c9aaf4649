"""Per-tensor dot products of two gradients, their aggregation, and the distributed reduce.

Everything stays on the device; only the final vector of per-tensor scalars is moved to the host.
Per-tensor dot products accumulate in fp32 (float64 for float64 models), whatever the model dtype; the
vector of per-tensor values and everything summed from it is float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from geffect.effects.blocks import GROUPS, ParameterLayout


def param_grads(layout: ParameterLayout) -> list[torch.Tensor | None]:
    """The `p.grad` of every tracked parameter (the full-loss gradient after the step's backward)."""
    return [p.grad for p in layout.params]


DOT_CHUNK = 1 << 20  # elements per BLAS dot: its fp32 accumulation error stays that of a 1M-element sum


def tensor_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """<a, b> as a 0-d tensor of `dtype` on a's device, accumulated in fp32 or wider.

    BLAS dots (fp32, or float64 for float64 tensors) over chunks of `DOT_CHUNK` elements, summed in float64:
    no temporary of the tensor's size (a product tensor would be one more copy of the largest gradient, the
    peak of a streamed measurement), several times faster than a product and a sum, and the fp32 running sum
    is never longer than one chunk. Narrower dtypes are widened one chunk at a time.
    """
    if a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64) and a.numel() <= DOT_CHUNK:
        return torch.dot(a.reshape(-1), b.reshape(-1)).to(dtype)  # the common case: one call, no conversions
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.reshape(-1), b.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, a.numel(), DOT_CHUNK):
        x, y = a[start : start + DOT_CHUNK], b[start : start + DOT_CHUNK]
        total += torch.dot(x.to(work), y.to(work))
    return total.to(dtype)


def tensor_dots(
    left: Sequence[torch.Tensor | None], right: Sequence[torch.Tensor | None], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Vector of per-tensor dot products (0 where either side is None), on the device, in `dtype`."""
    device = next((t.device for t in list(left) + list(right) if t is not None), torch.device("cpu"))
    values = []
    for a, b in zip(left, right):
        if a is None or b is None:
            values.append(torch.zeros((), dtype=dtype, device=device))
        else:
            values.append(tensor_dot(a, b, dtype))
    if not values:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.stack(values)


def streamed_dots(
    risk: torch.Tensor,
    params: Sequence[torch.Tensor],
    right: Sequence[torch.Tensor | None],
    dtype: torch.dtype = torch.float64,
    retain_graph: bool = True,
) -> torch.Tensor:
    """`tensor_dots(grad risk, right)` without ever holding the whole gradient: each parameter's gradient is
    dotted and dropped as soon as autograd has accumulated it (post-accumulate hooks), so the extra memory is
    the largest single tensor's gradient instead of all of them. `p.grad` is set aside and restored.

    Only for a plain single-process model: the backward accumulates into `.grad`, which would also trigger a
    DDP reducer's hooks (the caller keeps `torch.autograd.grad` there).
    """
    zero = torch.zeros((), dtype=dtype, device=risk.device)
    values = [zero] * len(params)
    saved = [p.grad for p in params]
    handles = []

    def take(index: int, param: torch.Tensor) -> None:
        if right[index] is not None:
            values[index] = values[index] + tensor_dot(param.grad, right[index], dtype)
        param.grad = None

    try:
        for index, param in enumerate(params):
            param.grad = None
            handles.append(param.register_post_accumulate_grad_hook(lambda p, i=index: take(i, p)))
        torch.autograd.backward(risk, inputs=list(params), retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()
        for param, grad in zip(params, saved):
            param.grad = grad
    return torch.stack(values) if values else zero.reshape(0)


@dataclass
class Breakdown:
    """A G-effect split over parameter tensors, with its group, layer and total sums."""

    per_tensor: torch.Tensor  # [n_tensors] float64, host
    layout: ParameterLayout

    @property
    def total(self) -> float:
        return float(self.per_tensor.sum())

    def groups(self) -> dict[str, float]:
        sums = dict.fromkeys(GROUPS, 0.0)
        for info, value in zip(self.layout.tensors, self.per_tensor.tolist()):
            sums[info.group] += value
        return sums

    def layers(self) -> list[float]:
        sums = [0.0] * self.layout.num_layers
        for info, value in zip(self.layout.tensors, self.per_tensor.tolist()):
            if info.layer is not None:
                sums[info.layer] += value
        return sums

    def tensors(self) -> dict[str, float]:
        return dict(zip(self.layout.names, self.per_tensor.tolist()))

    def to_json(self, tensors: bool = False) -> dict:
        out = {"total": self.total, "groups": self.groups(), "layers": self.layers()}
        if tensors:
            out["tensors"] = self.tensors()
        return out


# -- distributed -------------------------------------------------------------------------------------------

REDUCE_MODES = ("none", "data_parallel", "sharded")


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def reduce_partials(partials: torch.Tensor, mode: str, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Combine per-rank partial dot products with a single all_reduce of one vector.

    - `none`: single process, or values already global.
    - `sharded` (FSDP, ZeRO-3): each rank holds a slice of every gradient, so the global dot is the sum
      of the partial dots over ranks.
    - `data_parallel` (DDP): the objective gradient G is replicated (DDP averaged it) but each rank's risk
      gradient is over its own items. The risk of the union is the token mean over all ranks, so the
      global value is sum_k w_k * partial_k / sum_k w_k with w_k the rank's number of risk tokens.
    Any trailing dimensions (e.g. per-item columns) are reduced alike.
    """
    if mode not in REDUCE_MODES:
        raise ValueError(f"unknown reduce mode {mode!r}; choose one of {REDUCE_MODES}")
    if mode == "none" or not _distributed():
        return partials
    if mode == "sharded":
        out = partials.clone()
        torch.distributed.all_reduce(out)
        return out
    w = torch.as_tensor(weight, dtype=partials.dtype, device=partials.device).reshape(1)
    packed = torch.cat([(partials * w).reshape(-1), w])
    torch.distributed.all_reduce(packed)
    return (packed[:-1] / packed[-1]).reshape(partials.shape)


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest `value` over all processes (itself when there is one)."""
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor)


def detect_reduce_mode(model: torch.nn.Module) -> str:
    """`sharded` when parameters are FSDP/ZeRO-3 shards, `data_parallel` under plain multi-process runs."""
    if not _distributed():
        return "none"
    for p in model.parameters():
        if (
            type(p).__name__ in ("DTensor", "FlatParameter")
            or hasattr(p, "ds_id")
            or getattr(p, "_is_flat_param", False)
        ):
            return "sharded"
    return "data_parallel"
