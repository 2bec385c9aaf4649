"""The ways of measuring one side of a step, e = grad R . G, and the one function that chooses among them.

A side is the forget batch (u) or the retain batch (r; a probe batch when the step has none), with the risk
the objective left attached to the step's graph, if any. The ways, cheapest first:

- `from_algebra`: the loss is structurally linear in the risks, loss = a_f R_u + a_r R_r (read from the
  autograd graph, `linear_coefficients`), and G is this micro-batch's gradient: grad R_u . G follows from
  G . G and grad R_r . G (GA: -G.G / gamma, for free);
- `from_replay`: under the same structure the step's own backward brought each hooked module of the side's
  forward c times the risk's output gradients; the recorder kept them (`GhostRecorder.replay`);
- `from_ghost_backward` / `from_ghost_forward`: a ghost backward (per tensor and per item, no gradient
  materialised) over the step's graph, or over a forward of its own beside the step's captures;
- `from_streamed_dots`: one parameter's gradient at a time (a plain single-process model);
- `from_autograd`: `torch.autograd.grad` (DDP/FSDP; the EMA keeps the gradients);
- `from_new_forward`: a risk the step did not compute, in micro-batches within the activation budget.

`plan_sides` picks, once per step, the order of the sides and the ways each may take (the first that gives a
result wins); `measure_sides` runs the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from geffect.effects.blocks import ParameterLayout
from geffect.effects.budget import ActivationBudget
from geffect.effects.dots import streamed_dots, tensor_dots
from geffect.effects.engine import SetEffect, ghost_effect, gradient_effect, item_effects, split_tokens, total_tokens
from geffect.effects.ghost import GhostPass, GhostRecorder
from geffect.effects.tokens import risk_terms, token_effects
from geffect.tokens import Batch, count_tokens

if TYPE_CHECKING:  # effects.config imports the estimators, which import this module
    from geffect.effects.config import TrackerConfig

# -- structural linearity ------------------------------------------------------------------------------------


def risk_coefficient(loss: torch.Tensor | None, risk: torch.Tensor | None) -> float | None:
    """c when the autograd graph shows loss == c * risk (loss is risk: 1; loss = -risk: -1); else None."""
    if loss is None or risk is None or risk.grad_fn is None:
        return None
    if loss is risk:
        return 1.0
    fn = loss.grad_fn
    if fn is not None and type(fn).__name__ == "NegBackward0" and fn.next_functions[0][0] is risk.grad_fn:
        return -1.0
    return None


def linear_coefficients(out, gamma: float | None, alpha: float | None) -> tuple[float, float] | None:
    """(a_f, a_r) with loss = a_f * R_f + a_r * R_r exactly (a_r = 0 without a retain term), else None."""
    if gamma is None or out.forget_risk is None:
        return None
    c_f = risk_coefficient(out.forget_loss, out.forget_risk)
    if c_f is None or gamma == 0:
        return None
    a_f, a_r = gamma * c_f, 0.0
    value = gamma * float(out.forget_loss.detach())
    if out.retain_loss is not None:
        c_r = risk_coefficient(out.retain_loss, out.retain_risk)
        if c_r is None or alpha is None:
            return None
        a_r = alpha * c_r
        value += alpha * float(out.retain_loss.detach())
    if not math.isclose(float(out.loss.detach()), value, rel_tol=1e-5, abs_tol=1e-7):
        return None
    return a_f, a_r


# -- what a side is, and what measuring it needs ---------------------------------------------------------------


@dataclass
class Side:
    name: str  # "u" or "r"
    batch: Batch
    risk: torch.Tensor | None  # the risk on the step's graph, None when a new forward must compute it
    coefficient: float | None = None  # loss = coefficient * risk + (other terms), when structurally linear


def attached(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad and t.grad_fn is not None


def step_sides(step, next_probe: Callable[[], Batch], linear: tuple[float, float] | None) -> dict[str, Side]:
    """The step's two sides: its forget batch, and its retain batch or else the next probe batch."""
    out, retain = step.loss_output, step.batch.retain
    a_f, a_r = linear if linear is not None else (None, None)
    sides = {"u": Side("u", step.batch.forget, out.forget_risk if attached(out.forget_risk) else None, a_f)}
    if retain is not None:
        sides["r"] = Side("r", retain, out.retain_risk if attached(out.retain_risk) else None, a_r)
    else:
        sides["r"] = Side("r", next_probe(), None, a_r)
    return sides


@dataclass
class Tools:
    """What the tracker measures with: the model, its layout, the options and the shared helpers."""

    model: nn.Module
    layout: ParameterLayout
    config: TrackerConfig
    budget: ActivationBudget
    recorder: GhostRecorder | None = None  # batch estimator with instances: hooks on the step's forwards
    streamable: bool = False  # one process, parameters not sharded: `streamed_dots` may run


@dataclass
class StepMeasurement:
    """One measured step: G, what the plan may use, and the sides measured so far."""

    tools: Tools
    G: list[torch.Tensor | None]
    linear: tuple[float, float] | None = None  # (a_f, a_r), see `linear_coefficients`
    itemise: bool = False  # per-item contributions from ghost passes (batch estimator with instances)
    want_gradient: bool = False  # ghost sides also return grad R (the instance scatter's directions)
    keep: dict[str, list] | None = None  # EMA: each side's risk gradient, kept
    effects: dict[str, SetEffect] = field(default_factory=dict)


SideWay = Callable[[StepMeasurement, Side], "SetEffect | None"]


def measure_set(tools: Tools, batches: Sequence[Batch], G) -> SetEffect:
    """e on a set that needs forwards of its own, in micro-batches within the activation budget."""
    model, n = tools.model, total_tokens(batches)
    with tools.budget.counting():
        if tools.config.instances:
            return ghost_effect(
                model,
                tools.layout,
                tools.budget.split(batches),
                G,
                n_total=n,
                tokens=tools.config.tokens,
                recorder=tools.recorder,
            )
        return gradient_effect(model, tools.layout, tools.budget.split(batches), G, n_total=n, stream=tools.streamable)


# -- the ways ----------------------------------------------------------------------------------------------------


def from_algebra(m: StepMeasurement, side: Side) -> SetEffect:
    """u under loss = a_f R_u + a_r R_r: grad R_u . G = (G . G - a_r grad R_r . G) / a_f (r measured first)."""
    a_f, a_r = m.linear
    gg = tensor_dots(m.G, m.G)
    if a_r == 0.0:
        dots = gg / a_f
    else:
        dots = (gg - a_r * m.effects["r"].per_tensor.to(gg.device)) / a_f
    risk = float(side.risk.detach()) if side.risk is not None else float("nan")
    return SetEffect(dots.cpu(), m.tools.layout, risk, count_tokens(side.batch["labels"]))


def ghost_side(m: StepMeasurement, side: Side, result: GhostPass) -> SetEffect:
    """A side's SetEffect from a ghost pass over its batch: per tensor, per item (and per token)."""
    tools, n = m.tools, count_tokens(side.batch["labels"])
    items, counts, tokens = item_effects(tools.model, tools.layout, side.batch, m.G, n, result, tools.config.tokens)
    return SetEffect(result.per_tensor.cpu(), tools.layout, float(side.risk.detach()), n, items, tokens, counts)


def from_replay(m: StepMeasurement, side: Side) -> SetEffect | None:
    """Instances from the output gradients the step's backward left (loss = coefficient * risk + ...);
    None when they cannot stand in for a ghost backward (the next way runs one)."""
    recorder = m.tools.recorder
    if recorder is None or side.coefficient == 0.0:
        return None
    forwards = recorder.forwards_of(side.batch["input_ids"])
    if len(forwards) != 1:  # not recorded, or two forwards of identical inputs: ambiguous
        return None
    result = recorder.replay(forwards[0], m.G, side.batch["labels"].shape[0], scale=1.0 / side.coefficient)
    return None if result is None else ghost_side(m, side, result)


def from_ghost_backward(m: StepMeasurement, side: Side) -> SetEffect:
    """A ghost backward of the side's risk over the step's graph (its forward was recorded)."""
    risk = side.risk
    result = m.tools.recorder.backward(
        risk.float() if risk.dtype != torch.float64 else risk,
        m.G,
        batch_size=side.batch["labels"].shape[0],
        retain_graph=True,
        with_grads=m.want_gradient,
    )
    effect = ghost_side(m, side, result)
    effect.gradient = result.grads
    return effect


def from_ghost_forward(m: StepMeasurement, side: Side) -> SetEffect:
    """A forward of its own (recorded beside the step's, whose captures it keeps) and its ghost backward."""
    tools = m.tools
    with tools.budget.counting():
        return ghost_effect(
            tools.model,
            tools.layout,
            tools.budget.micro_batches(side.batch),
            m.G,
            n_total=count_tokens(side.batch["labels"]),
            tokens=tools.config.tokens,
            recorder=tools.recorder,
            keep_gradient=m.want_gradient,
        )


def from_new_forward(m: StepMeasurement, side: Side) -> SetEffect:
    return measure_set(m.tools, [side.batch], m.G)


def _risk_gradient_effect(m: StepMeasurement, side: Side, dots_of: Callable[[torch.Tensor], torch.Tensor]) -> SetEffect:
    """e from the side's risk (a new forward when the step has none), with per-token terms on request."""
    tools, batch = m.tools, side.batch
    n = count_tokens(batch["labels"])
    with torch.enable_grad():
        risk = side.risk if side.risk is not None else risk_terms(tools.model, batch)[0]
        dots = dots_of(risk)
    effect = SetEffect(dots.cpu(), tools.layout, float(risk.detach()), n)
    if tools.config.tokens:
        ids = [int(i) for i in batch["index"]]
        tokens = token_effects(tools.model, tools.layout, batch, m.G, n)
        effect.tokens = split_tokens(tokens, batch["labels"], ids)
        effect.items = {i: sum(v) for i, v in effect.tokens.items()}
    return effect


def from_streamed_dots(m: StepMeasurement, side: Side) -> SetEffect:
    return _risk_gradient_effect(
        m, side, lambda risk: streamed_dots(risk, m.tools.layout.params, m.G)
    )  # never more than one tensor's gradient


def from_autograd(m: StepMeasurement, side: Side) -> SetEffect:
    def dots_of(risk: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(risk, m.tools.layout.params, allow_unused=True, retain_graph=True)
        dots = tensor_dots(grads, m.G)
        if m.keep is not None:
            m.keep.setdefault(side.name, []).extend(grads)
        return dots

    return _risk_gradient_effect(m, side, dots_of)


# -- the plan ----------------------------------------------------------------------------------------------------


def plan_sides(m: StepMeasurement, sides: dict[str, Side]) -> list[tuple[Side, tuple[SideWay, ...]]]:
    """The sides in the order they run, each with the ways it may be measured (the first result wins).

    With instances r runs first, so that u's algebra or split may use its gradient; the linear form measures
    r and derives u; otherwise u, then r (the order the activation budget learns its figure in).
    """
    u, r = sides["u"], sides["r"]
    if m.itemise:
        return [(r, _ghost_ways(m, r, replay=not m.want_gradient)), (u, _ghost_ways(m, u, replay=True))]
    if m.linear is not None:
        return [(r, (_plain_way(m, r),)), (u, (from_algebra,))]
    return [(u, (_plain_way(m, u),)), (r, (_plain_way(m, r),))]


def _ghost_ways(m: StepMeasurement, side: Side, replay: bool) -> tuple[SideWay, ...]:
    recorder = m.tools.recorder
    ghost = (
        from_ghost_forward
        if side.risk is None or recorder is None or not recorder.has_captures
        else from_ghost_backward
    )
    if replay and m.linear is not None and side.risk is not None:
        return from_replay, ghost
    return (ghost,)


def _plain_way(m: StepMeasurement, side: Side) -> SideWay:
    if side.risk is None and m.keep is None:
        return from_new_forward
    if m.keep is None and m.tools.streamable:
        return from_streamed_dots
    return from_autograd


def measure_sides(m: StepMeasurement, sides: dict[str, Side]) -> dict[str, SetEffect]:
    """Both sides' effects, measured as `plan_sides` says."""
    for side, ways in plan_sides(m, sides):
        for way in ways:
            effect = way(m, side)
            if effect is not None:
                m.effects[side.name] = effect
                break
    return m.effects
