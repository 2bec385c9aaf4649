"""Per-item G-effects exact, or refused: the checks around the ghost path, and measuring without dropout.

- `refuse_inexact_split` (before training, `--geffect-instances`): on one small batch of the run's data the
  ghost path's per-tensor values along the batch's own risk gradient G (no cancellation: each is |g|^2
  in exact arithmetic) are compared with plain-gradient dot products; any tensor off by more than the
  tolerance, or a module whose tangent cannot be computed at all, refuses the run with one line naming the
  module class.
- `StepGuard` (the first measured step with instances): the logged per-tensor values and the sum of the
  logged items of the forget side are compared with the plain path's grad R_u . G for the same batch and G;
  a mismatch stops the run with one line naming the module class whose tensors disagree.
- `measurement_step` (dropout): a risk is defined without dropout (the eval-mode forward, what a
  recomputation from a checkpoint gives). When the model trains with dropout the step's own graph holds
  other risks (its random masks), so the measurement runs in eval mode on forwards of its own: the step is
  handed to the estimator with its risks detached from the graph, and every shortcut that reads the
  step's graph (the linear form, replays, ghost backwards over the step's forward) is skipped. G is the
  step's gradient, masks and all: the direction the optimizer takes.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
from torch import nn

from geffect.effects.blocks import ParameterLayout, discover_layout
from geffect.effects.dots import tensor_dots
from geffect.effects.engine import SetEffect, ghost_effect, gradient_effect
from geffect.effects.ghost import GhostRecorder, GhostUnsupported
from geffect.effects.tokens import risk_terms
from geffect.errors import UsageError
from geffect.tokens import Batch

# fp32 and float64 models alike: a float64 model may still compute norms, routers or scans in float32
TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-4}
LOW_PRECISION_TOLERANCE = 3e-2  # bf16 / fp16 gradients against fp32 ghost sums
FLOOR = 1e-3  # tensors below this share of the largest value are compared against that share instead

DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def tolerance_for(layout: ParameterLayout) -> float:
    return TOLERANCE.get(layout.params[0].dtype, LOW_PRECISION_TOLERANCE) if layout.params else 1e-4


# -- dropout ---------------------------------------------------------------------------------------------------


def _config_dropout(model: nn.Module) -> bool:
    """A dropout probability of the model's config above 0 (functional dropout, e.g. in attention)."""
    config = getattr(model, "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    return any(
        (key.endswith("dropout") or key.endswith("pdrop"))
        and not key.startswith(("classifier", "summary"))
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value > 0
        for key, value in values.items()
    )


def dropout_active(model: nn.Module) -> bool:
    """Whether a forward of `model` as it is (train mode) draws dropout masks."""
    if not model.training:
        return False
    modules = any(isinstance(m, DROPOUT_MODULES) and m.p > 0 and m.training for m in model.modules())
    return modules or any(_config_dropout(m) for m in model.modules() if hasattr(m, "config"))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def measurement_step(model: nn.Module, step) -> Iterator:
    """The step as the estimator should see it: itself without dropout; with dropout, in eval mode and with
    the risks detached (see the module docstring)."""
    if not dropout_active(model):
        yield step
        return
    out = dataclasses.replace(step.loss_output, forget_risk=None, retain_risk=None)
    with eval_mode(model):
        yield dataclasses.replace(step, loss_output=out)


# -- comparing the ghost path with plain gradients ---------------------------------------------------------------


def _module_classes(model: nn.Module, layout: ParameterLayout) -> dict[int, str]:
    """Layout index -> the class of the module owning the tensor (the first one, for tied tensors)."""
    owners: dict[int, str] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            index = layout.index_of(p)
            if index is not None:
                owners.setdefault(index, type(module).__name__)
    return owners


def mismatches(
    model: nn.Module, layout: ParameterLayout, ghost: torch.Tensor, plain: torch.Tensor, tolerance: float
) -> list[str]:
    """'Class (tensor): ghost X, plain Y' for every tensor where the two per-tensor vectors disagree."""
    ghost, plain = ghost.double().cpu(), plain.double().cpu()
    floor = FLOOR * float(plain.abs().max()) if plain.numel() else 0.0
    scale = torch.maximum(torch.maximum(plain.abs(), ghost.abs()), torch.tensor(floor, dtype=torch.float64))
    bad = ((ghost - plain).abs() > tolerance * scale).nonzero().flatten().tolist()
    owners = _module_classes(model, layout)
    return [
        f"{owners.get(i, 'no module')} ({layout.names[i]}): ghost {float(ghost[i]):.6g}, plain {float(plain[i]):.6g}"
        for i in bad
    ]


def _refusal(found: list[str], when: str) -> UsageError:
    more = f" and {len(found) - 1} more tensor(s)" if len(found) > 1 else ""
    return UsageError(
        f"per-item G-effects are not exact on this model ({when}): {found[0]}{more}; "
        "run without --geffect-instances / --geffect-tokens / --geffect-scatter (totals stay exact)"
    )


def split_mismatches(model: nn.Module, batch: Batch, layout: ParameterLayout | None = None) -> list[str]:
    """The tensors (named with their module class) whose ghost value along the batch's own risk gradient
    differs from the plain dot product; the model in eval mode meanwhile."""
    layout = layout or discover_layout(model)
    with eval_mode(model), torch.enable_grad():
        risk, _, _ = risk_terms(model, batch)
        G = [g.detach() if g is not None else None for g in torch.autograd.grad(risk, layout.params, allow_unused=True)]
        plain = tensor_dots(G, G)
        try:
            ghost = ghost_effect(model, layout, [batch], G)
        except GhostUnsupported as err:
            return [f"{err.module_class.__name__} (no exact per-item term: neither forward mode nor double backward)"]
    found = mismatches(model, layout, ghost.per_tensor, plain, tolerance_for(layout))
    items = sum(ghost.items.values())
    if abs(items - float(plain.sum())) > tolerance_for(layout) * float(plain.abs().sum()):
        found.append(f"the items sum to {items:.6g}, the plain total is {float(plain.sum()):.6g}")
    return found


def refuse_inexact_split(model: nn.Module, batch: Batch) -> None:
    """UsageError (one line, naming the module class) when the ghost path is not exact on `model`."""
    found = split_mismatches(model, batch)
    if found:
        raise _refusal(found, "checked before training")


class StepGuard:
    """Checks the first measured step with instances against the plain path, once (see the docstring)."""

    def __init__(self) -> None:
        self.done = False

    def check(
        self,
        model: nn.Module,
        layout: ParameterLayout,
        effect: SetEffect,
        G: list,
        risk: torch.Tensor | None = None,
        batches: Sequence[Batch] = (),
        recorder: GhostRecorder | None = None,
    ) -> None:
        """`effect`: the logged forget side (per tensor and items) along G, of `risk` when it is still attached
        to the step's graph (one more backward over it, no forward), else of new forwards of `batches`."""
        if self.done or effect.items is None:
            return
        self.done = True
        if risk is not None and risk.requires_grad:
            with torch.enable_grad():
                grads = torch.autograd.grad(risk, layout.params, allow_unused=True, retain_graph=True)
            plain = tensor_dots(grads, G).cpu()
            del grads
        else:
            with recorder.paused() if recorder is not None else nullcontext():
                plain = gradient_effect(model, layout, list(batches), G).per_tensor
        tolerance = tolerance_for(layout)
        found = mismatches(model, layout, effect.per_tensor, plain, tolerance)
        items, total = sum(effect.items.values()), float(plain.sum())
        if abs(items - total) > tolerance * float(plain.abs().sum()):
            found.append(f"the items sum to {items:.6g}, the plain total is {total:.6g}")
        if found:
            raise _refusal(found, "the first measured step")
