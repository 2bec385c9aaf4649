"""Per-item G-effect contributions without per-item gradients ("ghost" dot products).

For a module with output y_i = f(x_i; W) the per-item gradient of a loss is sum_t (dy_{i,t}/dW)^T delta_{i,t},
so its inner product with a fixed direction G is sum_t delta_{i,t} . (J_W y_{i,t}) G: the module's
directional derivative along G (its "tangent output") dotted with the output gradient delta, summed over the
item's positions. One batched backward pass with hooks gives this for every item at once:

- forward hooks on every module that owns tracked parameters capture its inputs and put a tensor hook on
  its outputs; the tensor hook receives delta during the backward and turns it into per-item numbers at once
  (nothing is kept per item but scalars). Each output tensor is hooked once, and an output computed from
  another output of the same call (a router's scores from its logits) not at all: the other one's delta
  already carries it;
- tangent outputs (`tangent_rules.py`): closed forms by module class (Linear, Conv1D, Embedding, LayerNorm,
  scaled word embeddings, OPT's positional table), each checked against the generic tangent on the real
  inputs the first time its class is met and used only if they agree; any other module through the generic
  tangent (forward mode, else double backward), which is exact whatever its forward does, as long as items
  do not mix along dimension 0. Norm scales are affine in their parameter, so f(p = G) - f(p = 0) is the
  same tangent for two plain forwards; that shortcut is taken for a module class once it has matched the
  exact tangent on real inputs (`GhostRecorder._generic_terms`).

The backward asks autograd only for the gradients of the "source" outputs (modules fed by no
differentiable input, e.g. the embeddings), so no parameter gradient is ever materialised. A parameter
tied to two modules (input embedding and lm_head) gets both modules' terms, as its gradient does.

Tensors that this cannot attribute per item (parameters of no hooked module, or modules whose outputs do
not keep the batch on dimension 0) still get exact totals from the same backward; their per-item part is
listed in `GhostPass.unitemised` for the caller's fallback (forward-mode, see `tokens.py`). A module whose
tangent neither mode can compute raises `GhostUnsupported`, naming its class.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from geffect.effects.blocks import ParameterLayout
from geffect.effects.dots import tensor_dot
from geffect.effects.tangent_rules import (
    TANGENT_RULES,
    GenericTangents,
    GhostUnsupported,
    item_dot,
    output_tensors,
    register_tangent_rule,
    reverse_mode_tangent,
    tangent_if_affine,
    tangent_rule,
    work_dtype,
)

__all__ = ["TANGENT_RULES", "GhostPass", "GhostRecorder", "GhostUnsupported", "register_tangent_rule", "tangent_rule"]

log = logging.getLogger(__name__)

# How far a module's outputs may differ from the generic tangent's for its closed form to be trusted, by the
# dtype the module computes in (the terms are float64 sums of products of the module's activations).
RULE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
LOW_PRECISION_TOLERANCE = 3e-2
GRAPH_WALK_LIMIT = 2000  # autograd nodes looked at per output when a module returns several


def _tensors_in(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found = [a for a in args if isinstance(a, torch.Tensor)]
    found += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return found


def _agree(candidate: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> bool:
    tolerance = RULE_TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE)
    scale = exact.abs().max().clamp(min=torch.finfo(torch.float64).tiny) if exact.numel() else 1.0
    return candidate.shape == exact.shape and bool(((candidate - exact).abs().max() / scale) <= tolerance)


def _derived(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> set[int]:
    """Positions of the outputs computed from another output of the same call (a router's scores from its
    logits): the other output's gradient already carries theirs, so counting them too would count twice.
    The walk up the autograd graph stops at the module's inputs and after GRAPH_WALK_LIMIT nodes."""
    boundary = {t.grad_fn for t in inputs if t.grad_fn is not None}
    owner = {out.grad_fn: j for j, out in enumerate(outputs) if out.grad_fn is not None}
    derived = set()
    for k, out in enumerate(outputs):
        stack = [fn for fn, _ in (out.grad_fn.next_functions if out.grad_fn is not None else ()) if fn is not None]
        seen: set = set()
        while stack and len(seen) < GRAPH_WALK_LIMIT:
            fn = stack.pop()
            if fn in seen or fn in boundary:
                continue
            seen.add(fn)
            if owner.get(fn, k) != k:
                derived.add(k)
                break
            stack.extend(f for f, _ in fn.next_functions if f is not None)
    return derived


def _graph_outputs(output: Any, inputs: list[torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    """(position in `output_tensors(output)`, tensor) of the outputs whose gradients carry the module's terms:
    each tensor once, not one of the module's inputs passed through, not computed from another output."""
    found, seen = [], {id(t) for t in inputs}
    for position, tensor in enumerate(output_tensors(output)):
        if tensor.requires_grad and id(tensor) not in seen:
            seen.add(id(tensor))
            found.append((position, tensor))
    if len(found) > 1:
        derived = _derived([t for _, t in found], inputs)
        found = [pair for k, pair in enumerate(found) if k not in derived]
    return found


@dataclass
class _Capture:
    module: nn.Module
    args: tuple
    kwargs: dict
    versions: list[tuple[torch.Tensor, int]]
    outputs: list[torch.Tensor]
    is_source: bool
    positions: list[int] = field(default_factory=list)  # each output's index in `output_tensors(module(...))`
    forward_id: int = 0
    reached_by_other_backward: bool = False
    kept_deltas: dict[int, torch.Tensor] = field(default_factory=dict)  # output index -> delta of another backward
    hooks: list = field(default_factory=list)  # handles of the tensor hooks on `outputs`

    def release(self) -> None:
        """Drop the hooks and tensors: an output's hook refers back to this capture, a reference cycle through
        the autograd graph that Python's collector does not free (it kept every step's activations alive)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        self.outputs.clear()
        self.positions.clear()
        self.kept_deltas.clear()
        self.args, self.kwargs, self.versions = (), {}, []


@dataclass
class GhostPass:
    """Per-tensor, per-item contributions of one ghost backward."""

    per_item: torch.Tensor  # [n_tensors, B] float64
    unitemised: torch.Tensor  # [n_tensors] float64, terms that could not be split per item
    unitemised_tensors: set[int] = field(default_factory=set)
    grads: list[torch.Tensor | None] | None = None  # the risk's parameter gradient, when asked for

    @property
    def per_tensor(self) -> torch.Tensor:
        return self.per_item.sum(1) + self.unitemised

    @property
    def items(self) -> torch.Tensor:
        return self.per_item.sum(0)


class GhostRecorder:
    """Hooks on a model for ghost dot products; use `recording()` around forwards, then `backward(...)`.

    The hooks stay registered until `remove()`; outside `recording()` they only return.
    """

    def __init__(self, model: nn.Module, layout: ParameterLayout):
        self.model = model
        self.layout = layout
        self._recording = False
        self._pass: tuple[GhostPass, list, int] | None = None  # (result, G by tensor, batch size)
        self._captures: list[_Capture] = []
        self._handles = []
        self._affine: dict[tuple[type, str], bool] = {}  # (module class, parameter) -> affine shortcut verified
        self._rule_checked: dict[tuple, bool] = {}  # (class, parameters) -> the closed form matched the generic
        self._generic = GenericTangents()
        hooked: set[int] = set()
        # module -> {own tracked parameter name: layout index}, looked up once: the hooks run per module per pass
        self._own: dict[nn.Module, dict[str, int]] = {}
        for module in model.modules():
            own = {
                n: layout.index_of(p)
                for n, p in module.named_parameters(recurse=False)
                if layout.index_of(p) is not None
            }
            if not own:
                continue
            self._own[module] = own
            hooked |= set(own.values())
            self._handles.append(module.register_forward_hook(self._on_forward, with_kwargs=True))
        # Parameters no module owns directly through a call we can see: totals come from plain gradients.
        self.unhooked = sorted(set(range(len(layout))) - hooked)
        self._batch_size: int | None = None
        self._forward_id = 0
        self._forward_inputs: dict[int, torch.Tensor] = {}
        # Keep the output gradients that another backward (the training step's own) passes through the hooks,
        # so that `replay` can turn them into per-item terms without a second backward.
        self.keep_deltas = False
        self._handles.append(model.register_forward_pre_hook(self._on_root, with_kwargs=True))

    # -- lifecycle ---------------------------------------------------------------------------------------
    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def _release(self, doomed: Callable[[_Capture], bool], forward_ids: set[int]) -> None:
        """Release and drop the captures `doomed` picks, and forget the inputs of `forward_ids`."""
        kept = []
        for capture in self._captures:
            if doomed(capture):
                capture.release()
            else:
                kept.append(capture)
        self._captures = kept
        self._forward_inputs = {k: v for k, v in self._forward_inputs.items() if k not in forward_ids}

    def clear(self) -> None:
        self._release(lambda capture: True, set(self._forward_inputs))

    @property
    def forward_count(self) -> int:
        """How many forwards have been recorded so far (forward ids are 1, 2, ...)."""
        return self._forward_id

    def release_after(self, count: int) -> None:
        """Drop the captures of the forwards recorded after the first `count` (finished ones), keep the rest."""
        self._release(lambda capture: capture.forward_id > count, {k for k in self._forward_inputs if k > count})

    def start(self) -> None:
        self._recording = True

    def stop(self) -> None:
        self._recording = False

    class _Recording:
        def __init__(self, recorder: "GhostRecorder"):
            self.recorder = recorder

        def __enter__(self):
            self.recorder.start()
            return self.recorder

        def __exit__(self, *exc):
            self.recorder.stop()

    def recording(self) -> "_Recording":
        return GhostRecorder._Recording(self)

    @contextmanager
    def paused(self):
        """No recording inside (forwards of a check that are not the step's), the previous state after."""
        was_recording, self._recording = self._recording, False
        try:
            yield self
        finally:
            self._recording = was_recording

    def drop_stale(self) -> None:
        """Forget captures whose graph another backward already used (a finished micro-batch)."""
        stale = {c.forward_id for c in self._captures if c.reached_by_other_backward}
        self._release(lambda capture: capture.reached_by_other_backward, stale)

    @property
    def has_captures(self) -> bool:
        return bool(self._captures)

    # -- hooks -------------------------------------------------------------------------------------------
    def _on_root(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        self._batch_size = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else None
        if self._recording and torch.is_grad_enabled():
            self._forward_id += 1
            if isinstance(first, torch.Tensor):
                self._forward_inputs[self._forward_id] = first

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._recording or not torch.is_grad_enabled():
            return None
        inputs = _tensors_in(args, kwargs)
        replaced = None
        if (
            isinstance(output, torch.Tensor)
            and output.requires_grad
            and output.dim() > 0
            and output.shape[0] == 1
            and (self._batch_size or 1) > 1
            and not any(t.requires_grad for t in inputs)
        ):
            # A table shared by the whole batch (GPT-2's position embeddings, [1, T, d]) is broadcast later, which
            # would sum the items' output gradients. Expanding it here (same values, no copy) keeps them apart.
            output = replaced = output.expand(self._batch_size, *output.shape[1:])
        found = _graph_outputs(output, inputs)
        if not found:
            return None
        capture = _Capture(
            module=module,
            args=tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
            kwargs={k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
            versions=[(t, t._version) for t in inputs],
            outputs=[t for _, t in found],
            is_source=not any(t.requires_grad for t in inputs),
            forward_id=self._forward_id,
            positions=[position for position, _ in found],
        )
        outputs = capture.outputs
        for k, out in enumerate(outputs):
            capture.hooks.append(out.register_hook(functools.partial(self._on_grad, capture, k)))
        self._captures.append(capture)
        return replaced

    def _on_grad(self, capture: _Capture, output_index: int, delta: torch.Tensor) -> None:
        if self._pass is None:
            capture.reached_by_other_backward = True
            if self.keep_deltas:
                capture.kept_deltas[output_index] = delta.detach()
            return
        result, G, batch_size = self._pass
        with torch.no_grad():
            self._add_terms(capture, output_index, delta, result, G, batch_size)

    def _add_terms(
        self, capture: _Capture, k: int, delta: torch.Tensor, result: GhostPass, G: list, batch_size: int
    ) -> None:
        for t, version in capture.versions:
            if t._version != version:
                raise RuntimeError(
                    f"an input of {type(capture.module).__name__} was modified in place after the forward; "
                    "ghost G-effects need the inputs as the module saw them"
                )
        module = capture.module
        own = self._own[module]
        tangents = {n: G[i] for n, i in own.items() if G[i] is not None}
        if not tangents:
            return
        rule = tangent_rule(module, set(own)) if len(capture.outputs) == 1 else None
        position = capture.positions[k]
        if rule is not None and self._rule_checked.get((type(module), *sorted(tangents)), True):
            terms = self._rule_terms(rule, module, capture.args, capture.kwargs, delta, tangents, position)
        else:
            terms = self._generic_terms(module, capture.args, capture.kwargs, delta, tangents, position)
        for name, values in terms.items():
            index = own[name]
            if values.shape[0] == batch_size and delta.shape[0] == batch_size:
                result.per_item[index] += values
            else:  # items are not on dimension 0 here: keep the exact total only
                result.unitemised[index] += values.sum()
                result.unitemised_tensors.add(index)

    @property
    def forward_ids(self) -> list[int]:
        """Ids of the recorded forwards whose captures are still held."""
        return sorted(self._forward_inputs)

    def forwards_of(self, inputs: torch.Tensor) -> list[int]:
        """Ids of the recorded forwards whose model input equals `inputs` (the same ids, the same shape)."""
        return [
            k
            for k, seen in self._forward_inputs.items()
            if seen is inputs
            or (seen.shape == inputs.shape and seen.device == inputs.device and torch.equal(seen, inputs))
        ]

    def replay(self, forward_id: int, G: list[torch.Tensor | None], batch_size: int, scale: float) -> GhostPass | None:
        """The ghost pass of one recorded forward from the output gradients the step's own backward left.

        When the step's loss is c * risk + (terms of other forwards), the output gradients that reached this
        forward's modules are c times those of `risk`, so `scale = 1 / c` gives exactly what
        `backward(risk, ...)` would, without running it. None when the kept gradients cannot stand in for a
        backward: nothing kept, or a tracked tensor outside every hooked module of that forward.
        """
        captures = [c for c in self._captures if c.forward_id == forward_id]
        if not captures or not any(c.kept_deltas for c in captures):
            return None
        n = len(self.layout)
        seen = {self.layout.index_of(p) for c in captures for p in c.module.parameters(recurse=False)}
        if any(i not in seen and G[i] is not None for i in range(n)):
            return None
        device = next(iter(next(c for c in captures if c.kept_deltas).kept_deltas.values())).device
        result = GhostPass(
            per_item=torch.zeros(n, batch_size, dtype=torch.float64, device=device),
            unitemised=torch.zeros(n, dtype=torch.float64, device=device),
        )
        with torch.no_grad():
            for capture in captures:
                for k, delta in capture.kept_deltas.items():
                    self._add_terms(capture, k, delta, result, G, batch_size)
        result.per_item.mul_(scale)  # every term is linear in delta
        result.unitemised.mul_(scale)
        return result

    def _rule_terms(
        self, rule, module: nn.Module, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict, position: int
    ) -> dict:
        """A closed form's terms, trusted for a module class only once they have matched the generic tangent's
        on the first real inputs of that class; a class whose closed form disagrees takes the generic tangent
        from then on (and the mismatch is logged with the class's name)."""
        terms = rule(module, args, kwargs, delta, G)
        key = (type(module), *sorted(G))
        if key in self._rule_checked:
            return terms
        dt = work_dtype(delta.dtype)
        exact = {
            name: item_dot(
                self._generic.exact(module, name, reverse_mode_tangent(module, name, g), args, kwargs, position).to(dt),
                delta.to(dt),
            )
            for name, g in G.items()
        }
        dtype = next(module.parameters(recurse=False)).dtype
        agree = terms.keys() == exact.keys() and all(_agree(terms[n], exact[n], dtype) for n in exact)
        self._rule_checked[key] = agree
        if not agree:
            log.warning(
                "the closed-form ghost rule for %s disagrees with forward mode on real inputs; using forward mode",
                type(module).__name__,
            )
        return terms if agree else exact

    def _generic_terms(
        self, module: nn.Module, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict, output_index: int
    ) -> dict:
        """Per-item terms of any other module from its tangent output along each own parameter. The first
        time a (module class, parameter) pair is seen, the affine shortcut is checked against the exact
        tangent (forward mode, else double backward) on the real inputs; it is used from then on only if the
        two agree."""
        dt = work_dtype(delta.dtype)
        out = {}
        for name, tangent in G.items():
            tangent = reverse_mode_tangent(module, name, tangent)
            key = (type(module), name)
            if key not in self._affine:
                exact = self._generic.exact(module, name, tangent, args, kwargs, output_index)
                shortcut = tangent_if_affine(module, name, tangent, args, kwargs, output_index)
                scale = exact.abs().max().clamp(min=torch.finfo(exact.dtype).tiny)
                self._affine[key] = shortcut.shape == exact.shape and bool(
                    ((shortcut - exact).abs().max() / scale) < 1e-5
                )
                tangent_out = exact
            elif self._affine[key]:
                tangent_out = tangent_if_affine(module, name, tangent, args, kwargs, output_index)
            else:
                tangent_out = self._generic.exact(module, name, tangent, args, kwargs, output_index)
            out[name] = item_dot(tangent_out.to(dt), delta.to(dt))
        return out

    # -- the ghost backward ------------------------------------------------------------------------------
    def backward(
        self,
        risk: torch.Tensor,
        G: list[torch.Tensor | None],
        batch_size: int,
        retain_graph: bool = False,
        with_grads: bool = False,
    ) -> GhostPass:
        """Per-tensor, per-item contributions grad(risk_i) . G for the recorded forward(s) behind `risk`.

        `risk` must be a sum over items of per-item terms (e.g. sum of token NLLs / N). `G` is aligned with
        the layout (None = zero). Only one ghost backward runs at a time. `with_grads` also returns the risk's
        parameter gradient from the same backward (`GhostPass.grads`), for use as a direction.
        """
        if self._pass is not None:
            raise RuntimeError("a ghost backward is already running")
        device = risk.device
        n = len(self.layout)
        result = GhostPass(
            per_item=torch.zeros(n, batch_size, dtype=torch.float64, device=device),
            unitemised=torch.zeros(n, dtype=torch.float64, device=device),
        )
        sources = [out for c in self._captures if c.is_source for out in c.outputs]
        # Tensors whose owning module was not called in the recorded forward(s) may still be used (by a
        # parent that reads `module.weight` directly): their exact totals come from plain gradients.
        seen = {self.layout.index_of(p) for c in self._captures for p in c.module.parameters(recurse=False)}
        extra = [i for i in range(n) if i not in seen and G[i] is not None]
        wanted = list(range(n)) if with_grads else extra
        inputs = sources + [self.layout.params[i] for i in wanted]
        if not inputs:
            return result
        self._pass = (result, G, batch_size)
        was_recording, self._recording = self._recording, False  # jvp re-runs module forwards
        try:
            grads = torch.autograd.grad(risk, inputs, allow_unused=True, retain_graph=retain_graph)
        finally:
            self._pass = None
            self._recording = was_recording
        by_tensor = dict(zip(wanted, grads[len(sources) :]))
        for i in extra:
            if by_tensor[i] is not None:
                result.unitemised[i] += tensor_dot(by_tensor[i], G[i])
                result.unitemised_tensors.add(i)
        if with_grads:
            result.grads = [by_tensor[i] for i in range(n)]
        return result
