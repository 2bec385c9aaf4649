"""Per-token risks and the per-loss-token G-effect contributions.

Token contribution (our definition, documented in docs/geffect-format.md): for the risk
R(D) = (1/N) sum_{i,t} ce_{i,t}, the contribution of answer token t of item i is

    c_{i,t} = (1/N) grad ce_{i,t} . G,

the first-order change of that token's loss along the step direction (times -eta). These sum to the item's
contribution c_i and to e(D). They are NOT the per-position split of a parameter gradient that ghost hooks
would give: under causal attention a position's activations serve the losses of all later tokens.

All c_{i,t} come from one forward-mode pass (`torch.autograd.forward_ad`, tangents = G, through
`torch.func.functional_call`), inside the math SDPA kernel because the fused CPU/GPU attention kernels have
no forward derivative. Wherever forward mode fails (an operation without a forward-mode formula, a custom
autograd.Function without `jvp`, ...) the double-backward trick (d/dv [grad_theta (v . ce)] . G) gives the
same numbers at a higher price.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from geffect.effects.blocks import ParameterLayout
from geffect.errors import UsageError
from geffect.models.answer_logits import answer_logits
from geffect.tokens import IGNORE_INDEX, count_tokens

MODEL_KEYS = ("input_ids", "attention_mask")
log = logging.getLogger(__name__)


def model_inputs(batch: dict) -> dict:
    """The keyword arguments a causal LM forward needs (labels are kept out: the loss is ours)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token CE [B, T] aligned with `labels` (0 at ignored positions), in fp32 or wider."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    target = labels[:, 1:]
    ce = F.cross_entropy(
        logits[:, :-1].to(dtype).reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(target.shape)
    return F.pad(ce, (1, 0))


def risk_terms(model: nn.Module, batch: dict, n_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Forward `batch`; return (risk scaled by 1/n_total, per-token CE [B, T], n tokens in the batch).
    Only the positions that predict answer tokens reach the vocabulary projection (`answer_logits`)."""
    labels = batch["labels"]
    logits, start = answer_logits(model, model_inputs(batch), labels)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    target = labels[:, start + 1 :]
    ce = F.cross_entropy(logits.to(dtype).flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    ce = F.pad(ce.reshape(target.shape), (start + 1, 0))
    n = count_tokens(labels)
    return ce.sum() / (n_total or max(n, 1)), ce, n


@contextmanager
def math_attention():
    """Use the plain-math SDPA kernel, the only one with forward-mode derivatives."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _tangent_map(G: list[torch.Tensor | None], only: set[int] | None) -> dict[int, torch.Tensor]:
    return {i: g for i, g in enumerate(G) if g is not None and (only is None or i in only)}


def token_effects_forward(
    model: nn.Module,
    layout: ParameterLayout,
    batch: dict,
    G: list[torch.Tensor | None],
    n_total: int | None = None,
    only: set[int] | None = None,
) -> torch.Tensor:
    """c_{i,t} [B, T] float64 (aligned with labels) by one forward-mode pass; `only` restricts G to some tensors."""
    tangents = _tangent_map(G, only)
    n = n_total or max(count_tokens(batch["labels"]), 1)
    with torch.no_grad(), math_attention(), fwAD.dual_level():
        params = {
            layout.names[i]: fwAD.make_dual(layout.params[i].detach(), g.to(layout.params[i].dtype))
            for i, g in tangents.items()
        }
        logits = torch.func.functional_call(model, params, (), model_inputs(batch)).logits
        ce = token_nll(logits, batch["labels"])
        tangent = fwAD.unpack_dual(ce).tangent
    if tangent is None:  # nothing depends on the tangent parameters
        return torch.zeros(batch["labels"].shape, dtype=torch.float64, device=batch["labels"].device)
    return tangent.to(torch.float64) / n


def token_effects_double_backward(
    model: nn.Module,
    layout: ParameterLayout,
    batch: dict,
    G: list[torch.Tensor | None],
    n_total: int | None = None,
    only: set[int] | None = None,
) -> torch.Tensor:
    """Same numbers as `token_effects_forward` with reverse mode only (costlier; for ops without forward AD)."""
    tangents = _tangent_map(G, only)
    n = n_total or max(count_tokens(batch["labels"]), 1)
    indices = list(tangents)
    with torch.enable_grad(), math_attention():
        _, ce, _ = risk_terms(model, batch)
        v = torch.zeros_like(ce, requires_grad=True)
        grads = torch.autograd.grad(
            (ce * v).sum(), [layout.params[i] for i in indices], create_graph=True, allow_unused=True
        )
        s = sum((g * tangents[i].to(g.dtype)).sum() for i, g in zip(indices, grads) if g is not None)
        if not isinstance(s, torch.Tensor) or not s.requires_grad:
            return torch.zeros(ce.shape, dtype=torch.float64, device=ce.device)
        (out,) = torch.autograd.grad(s, v)
    return out.detach().to(torch.float64) / n


def token_effects(
    model: nn.Module,
    layout: ParameterLayout,
    batch: dict,
    G: list[torch.Tensor | None],
    n_total: int | None = None,
    only: set[int] | None = None,
) -> torch.Tensor:
    """Per-loss-token contributions; forward mode, and double backward wherever forward mode fails for this
    model (chosen by trying, not by the wording of the error: an op or a custom autograd.Function without a
    forward derivative, an in-place update functorch refuses, ...)."""
    try:
        return token_effects_forward(model, layout, batch, G, n_total, only)
    except Exception as err:  # noqa: BLE001 - any failure of forward mode: reverse mode gives the same numbers
        log.warning(
            "forward-mode AD failed on this model (%s: %s); using double backward for token G-effects",
            type(err).__name__,
            (str(err).splitlines() or [""])[0],
        )
        try:
            return token_effects_double_backward(model, layout, batch, G, n_total, only)
        except Exception as second:  # noqa: BLE001 - neither mode: one line for the user, not a traceback
            raise UsageError(
                f"per-token G-effects cannot be computed on {type(model).__name__}: forward mode failed "
                f"({type(err).__name__}) and double backward failed ({(str(second).splitlines() or [''])[0]}); "
                "run without --geffect-tokens"
            ) from second
