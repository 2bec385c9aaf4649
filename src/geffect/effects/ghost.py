"""Per-item G-effect contributions without per-item gradients ("ghost" dot products).

For a module with output y_i = f(x_i; W) the per-item gradient of a loss is sum_t (dy_{i,t}/dW)^T delta_{i,t},
so its inner product with a fixed direction G is sum_t delta_{i,t} . (J_W y_{i,t}) G: the module's
directional derivative along G (its "tangent output") dotted with the output gradient delta, summed over the
item's positions. One batched backward pass with hooks gives this for every item at once:

- forward hooks on every module that owns tracked parameters capture its inputs and put a tensor hook on
  its output; the tensor hook receives delta during the backward and turns it into per-item numbers at once
  (nothing is kept per item but scalars);
- tangent outputs: `nn.Linear` x G_W^T (+ G_b), transformers' `Conv1D` x G_W (+ G_b), `nn.Embedding`
  G_W[ids] (zero at `padding_idx`, whose row never receives gradient), any other module (LayerNorm,
  RMSNorm of any flavour, ...) through `torch.func.jvp` of the module with respect to its own parameters,
  which is exact whatever its forward does, as long as items do not mix along dimension 0 (`nn.LayerNorm`
  has a closed form: normalised input times G_w, plus G_b). Norm scales are affine in their parameter, so
  f(p = G) - f(p = 0) is the same tangent for two plain forwards; that shortcut is taken for a module class
  once it has matched `jvp` on real inputs (`GhostRecorder._generic_terms`). The closed forms sit in a table
  keyed by module class (`register_tangent_rule`, looked up along the MRO); anything else takes forward mode.

The backward asks autograd only for the gradients of the "source" outputs (modules fed by no
differentiable input, e.g. the embeddings), so no parameter gradient is ever materialised. A parameter
tied to two modules (input embedding and lm_head) gets both modules' terms, as its gradient does.

Tensors that this cannot attribute per item (parameters of no hooked module, or modules whose outputs do
not keep the batch on dimension 0) still get exact totals from the same backward; their per-item part is
listed in `GhostPass.unitemised` for the caller's fallback (forward-mode, see `tokens.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from geffect.effects.blocks import ParameterLayout
from geffect.effects.dots import tensor_dot

try:  # GPT-2 style layers: y = x @ W + b with W stored [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = None


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_item(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64)


def _item_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-item <u_i, v_i> [B] for u, v broadcastable to [B, ...], accumulated in float64."""
    u, v = torch.broadcast_tensors(u, v)
    # The product-sized temporary is the size of the activations already held; summing it in float64 is ten
    # times faster than a batched matrix-vector product at these shapes, and more accurate.
    return (u * v).reshape(u.shape[0], -1).sum(1, dtype=torch.float64)


def _first_input(args: tuple, kwargs: dict, *names: str) -> torch.Tensor:
    if args:
        return args[0]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    raise RuntimeError("could not find the module input")


# -- tangent rules per module kind: each returns {param_name: per-item vector [B]} -----------------------------
#
# A table keyed by module class, looked up along the class's MRO (as Opacus registers its per-layer grad
# samplers): `tangent_rule(module)` gives the closed form registered for the nearest class, when that rule
# applies to the module's own parameters; every other module takes the forward-mode fallback
# (`GhostRecorder._generic_terms`).

TangentRule = Callable[[nn.Module, tuple, dict, torch.Tensor, dict], dict]
Applies = Callable[[nn.Module, set], bool]
TANGENT_RULES: dict[type, tuple[TangentRule, Applies]] = {}


def register_tangent_rule(
    *module_types: type, applies: Applies = lambda module, own: True
) -> Callable[[TangentRule], TangentRule]:
    """Decorator: `rule` gives the per-item tangent terms of modules of `module_types` (and their subclasses)
    whenever `applies(module, names of its own tracked parameters)`; otherwise the fallback runs."""

    def register(rule: TangentRule) -> TangentRule:
        for module_type in module_types:
            TANGENT_RULES[module_type] = (rule, applies)
        return rule

    return register


def tangent_rule(module: nn.Module, own: set) -> TangentRule | None:
    """The rule registered for the nearest class in the module's MRO, or None (forward-mode fallback)."""
    for cls in type(module).__mro__:
        if cls in TANGENT_RULES:
            rule, applies = TANGENT_RULES[cls]
            return rule if applies(module, own) else None
    return None


def _weight_and_bias_only(module: nn.Module, own: set) -> bool:
    return own <= {"weight", "bias"}


def _matmul_terms(x: torch.Tensor, delta: torch.Tensor, G: dict, weight_in_out) -> dict:
    """y = x W (+ b) with `weight_in_out(G_W)` the weight's tangent as [in, out]."""
    dt = _work_dtype(delta.dtype)
    d = delta.to(dt)
    out = {}
    if "weight" in G:
        # sum_t delta_t^T G a_t, projecting onto the smaller of the two sides (e.g. hidden, not vocabulary)
        weight_g = weight_in_out(G["weight"].to(dt))
        if weight_g.shape[1] > weight_g.shape[0]:
            out["weight"] = _item_dot(d @ weight_g.T, x.to(dt))
        else:
            out["weight"] = _item_dot(x.to(dt) @ weight_g, d)
    if "bias" in G:
        out["bias"] = _per_item(d.reshape(d.shape[0], -1, d.shape[-1]).sum(1) * G["bias"].to(dt))
    return out


@register_tangent_rule(nn.Linear, applies=_weight_and_bias_only)
def _linear_terms(module: nn.Linear, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    return _matmul_terms(_first_input(args, kwargs, "input"), delta, G, lambda weight_g: weight_g.T)  # W is [out, in]


if Conv1D is not None:

    @register_tangent_rule(Conv1D, applies=_weight_and_bias_only)
    def _conv1d_terms(module: nn.Module, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
        return _matmul_terms(_first_input(args, kwargs, "input"), delta, G, lambda weight_g: weight_g)  # W is [in, out]


@register_tangent_rule(nn.Embedding, applies=lambda module, own: module.max_norm is None)
def _embedding_terms(module: nn.Embedding, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    if "weight" not in G:
        return {}
    ids = _first_input(args, kwargs, "input")
    dt = _work_dtype(delta.dtype)
    rows = F.embedding(ids, G["weight"]).to(dt)
    if module.padding_idx is not None:
        rows = rows * (ids != module.padding_idx).unsqueeze(-1)
    return {"weight": _item_dot(rows, delta.to(dt))}


# nn.LayerNorm itself only: a subclass may change the forward, so it takes the fallback.
@register_tangent_rule(
    nn.LayerNorm, applies=lambda module, own: type(module) is nn.LayerNorm and own <= {"weight", "bias"}
)
def _layer_norm_terms(module: nn.LayerNorm, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    x = _first_input(args, kwargs, "input")
    dt = _work_dtype(delta.dtype)
    d = delta.to(dt)
    out = {}
    if "weight" in G:
        normalised = F.layer_norm(x, module.normalized_shape, None, None, module.eps).to(dt)
        out["weight"] = _item_dot(normalised * G["weight"].to(dt), d)
    if "bias" in G:
        out["bias"] = _per_item(d.reshape(d.shape[0], -1, d.shape[-1]).sum(1) * G["bias"].to(dt))
    return out


def _tangent_by_jvp(
    module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
) -> torch.Tensor:
    own = dict(module.named_parameters(recurse=False))

    def call(value):
        return _output_tensors(torch.func.functional_call(module, {name: value}, args, kwargs))[output_index]

    return torch.func.jvp(call, (own[name].detach(),), (tangent.to(own[name].dtype),))[1]


def _tangent_if_affine(
    module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
) -> torch.Tensor:
    """f(p = G) - f(p = 0): the exact tangent when the module's output is affine in the parameter p (norm
    scales and shifts: y = w * n(x) + b, or Gemma's (1 + w) * n(x)). Two plain forwards with the parameter's
    data swapped, several times cheaper than `functional_call` + `jvp`."""
    param = getattr(module, name)
    saved = param.data
    try:
        param.data = tangent.to(saved.dtype)
        at_tangent = _output_tensors(module(*args, **kwargs))[output_index]
        param.data = torch.zeros_like(saved)
        at_zero = _output_tensors(module(*args, **kwargs))[output_index]
    finally:
        param.data = saved
    return at_tangent - at_zero


def _output_tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    if hasattr(output, "to_tuple"):
        return [t for t in output.to_tuple() if isinstance(t, torch.Tensor)]
    return []


def _tensors_in(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found = [a for a in args if isinstance(a, torch.Tensor)]
    found += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return found


@dataclass
class _Capture:
    module: nn.Module
    args: tuple
    kwargs: dict
    versions: list[tuple[torch.Tensor, int]]
    outputs: list[torch.Tensor]
    is_source: bool
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
        outputs = [t for t in _output_tensors(output) if t.requires_grad]
        if not outputs:
            return None
        capture = _Capture(
            module=module,
            args=tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
            kwargs={k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
            versions=[(t, t._version) for t in inputs],
            outputs=outputs,
            is_source=not any(t.requires_grad for t in inputs),
            forward_id=self._forward_id,
        )
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
        rule = tangent_rule(module, set(own))
        if rule is not None:
            terms = rule(module, capture.args, capture.kwargs, delta, tangents)
        else:
            terms = self._generic_terms(module, capture.args, capture.kwargs, delta, tangents, k)
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

    def _generic_terms(
        self, module: nn.Module, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict, output_index: int
    ) -> dict:
        """Per-item terms of any other module from its tangent output along each own parameter. The first
        time a (module class, parameter) pair is seen, the affine shortcut is checked against forward-mode
        autograd on the real inputs; it is used from then on only if the two agree."""
        dt = _work_dtype(delta.dtype)
        out = {}
        for name, tangent in G.items():
            key = (type(module), name)
            if key not in self._affine:
                exact = _tangent_by_jvp(module, name, tangent, args, kwargs, output_index)
                shortcut = _tangent_if_affine(module, name, tangent, args, kwargs, output_index)
                scale = exact.abs().max().clamp(min=torch.finfo(exact.dtype).tiny)
                self._affine[key] = bool(((shortcut - exact).abs().max() / scale) < 1e-5)
                tangent_out = exact
            elif self._affine[key]:
                tangent_out = _tangent_if_affine(module, name, tangent, args, kwargs, output_index)
            else:
                tangent_out = _tangent_by_jvp(module, name, tangent, args, kwargs, output_index)
            out[name] = _item_dot(tangent_out.to(dt), delta.to(dt))
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
