"""Tangent outputs of one module along a direction G of its own parameters, for the ghost dot products.

For a module y = f(x; W), the per-item term of grad_W L . G is sum_t delta_{i,t} . (J_W y_{i,t}) G: the
module's directional derivative along G (its "tangent output") dotted with the output gradient delta. This
module gives that tangent two ways:

- closed forms, in a table keyed by module class (`register_tangent_rule`, looked up along the MRO as
  Opacus registers its per-layer grad samplers): `nn.Linear`, transformers' `Conv1D`, `nn.Embedding`,
  `nn.LayerNorm`, and by name the scaled word embeddings (Gemma's family: the table's rows times
  `embed_scale`) and OPT's learned positional embeddings (rows picked by the positions the attention mask
  gives, offset by 2). A rule is offered for a subclass only when the subclass does not override `forward`
  (a scaled or positional embedding is not a plain table); the recorder still checks each rule against the
  generic tangent on real inputs the first time a class is met (`GhostRecorder`);
- `exact_tangent`, for any module: forward mode (`torch.func.jvp` of the module with respect to its own
  parameter), and where forward mode fails for any reason (a custom autograd.Function without a jvp, an
  in-place copy into a captured tensor, ...) the double-backward identity J G = d/dv [(J^T v) . G], which
  only needs reverse mode. The padding row of an embedding never receives a gradient, so it is zeroed in G
  first (forward mode would otherwise count it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from geffect.errors import UsageError

try:  # GPT-2 style layers: y = x @ W + b with W stored [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = None


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_item(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64)


def item_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-item <u_i, v_i> [B] for u, v broadcastable to [B, ...], accumulated in float64."""
    u, v = torch.broadcast_tensors(u, v)
    # The product-sized temporary is the size of the activations already held; summing it in float64 is ten
    # times faster than a batched matrix-vector product at these shapes, and more accurate.
    return (u * v).reshape(u.shape[0], -1).sum(1, dtype=torch.float64)


def first_input(args: tuple, kwargs: dict, *names: str) -> torch.Tensor:
    if args:
        return args[0]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    raise RuntimeError("could not find the module input")


def output_tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    if hasattr(output, "to_tuple"):
        return [t for t in output.to_tuple() if isinstance(t, torch.Tensor)]
    return []


# -- the table of closed forms: each rule returns {param_name: per-item vector [B]} ---------------------------

TangentRule = Callable[[nn.Module, tuple, dict, torch.Tensor, dict], dict]
Applies = Callable[[nn.Module, set], bool]
TANGENT_RULES: dict[type | str, tuple[TangentRule, Applies]] = {}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_tangent_rule(
    *module_types: type | str, applies: Applies = lambda module, own: True
) -> Callable[[TangentRule], TangentRule]:
    """Decorator: `rule` gives the per-item tangent terms of modules of `module_types` (classes, or dotted
    class names for classes of optional packages) whenever `applies(module, names of its own tracked
    parameters)`; subclasses inherit the rule unless they override `forward`."""

    def register(rule: TangentRule) -> TangentRule:
        for module_type in module_types:
            TANGENT_RULES[module_type] = (rule, applies)
        return rule

    return register


def tangent_rule(module: nn.Module, own: set) -> TangentRule | None:
    """The rule registered for the nearest class in the module's MRO, or None (the generic tangent). None
    too when a class between the module's and the registered one overrides `forward`."""
    forward = type(module).forward
    for cls in type(module).__mro__:
        entry = TANGENT_RULES.get(cls) or TANGENT_RULES.get(_class_name(cls))
        if entry is not None:
            rule, applies = entry
            return rule if cls.forward is forward and applies(module, own) else None
    return None


def _weight_and_bias_only(module: nn.Module, own: set) -> bool:
    return own <= {"weight", "bias"}


def _bias_terms(d: torch.Tensor, bias_g: torch.Tensor) -> torch.Tensor:
    return per_item(d.reshape(d.shape[0], -1, d.shape[-1]).sum(1) * bias_g.to(d.dtype))


def _matmul_terms(x: torch.Tensor, delta: torch.Tensor, G: dict, weight_in_out) -> dict:
    """y = x W (+ b) with `weight_in_out(G_W)` the weight's tangent as [in, out]."""
    dt = work_dtype(delta.dtype)
    d = delta.to(dt)
    out = {}
    if "weight" in G:
        # sum_t delta_t^T G a_t, projecting onto the smaller of the two sides (e.g. hidden, not vocabulary)
        weight_g = weight_in_out(G["weight"].to(dt))
        if weight_g.shape[1] > weight_g.shape[0]:
            out["weight"] = item_dot(d @ weight_g.T, x.to(dt))
        else:
            out["weight"] = item_dot(x.to(dt) @ weight_g, d)
    if "bias" in G:
        out["bias"] = _bias_terms(d, G["bias"])
    return out


@register_tangent_rule(nn.Linear, applies=_weight_and_bias_only)
def _linear_terms(module: nn.Linear, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    return _matmul_terms(first_input(args, kwargs, "input"), delta, G, lambda weight_g: weight_g.T)  # W is [out, in]


if Conv1D is not None:

    @register_tangent_rule(Conv1D, applies=_weight_and_bias_only)
    def _conv1d_terms(module: nn.Module, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
        return _matmul_terms(first_input(args, kwargs, "input"), delta, G, lambda weight_g: weight_g)  # W is [in, out]


def _rows_terms(module: nn.Embedding, ids: torch.Tensor, delta: torch.Tensor, G: dict, scale=None) -> dict:
    """Terms of a table lookup `scale * W[ids]`: G's rows at the ids (none at `padding_idx`, whose row never
    receives a gradient) dotted with delta."""
    if "weight" not in G:
        return {}
    dt = work_dtype(delta.dtype)
    rows = F.embedding(ids, G["weight"]).to(dt)
    if scale is not None:
        rows = rows * torch.as_tensor(scale).to(device=rows.device, dtype=G["weight"].dtype).to(dt)
    if module.padding_idx is not None:
        rows = rows * (ids != module.padding_idx).unsqueeze(-1)
    return {"weight": item_dot(rows, delta.to(dt))}


def _table_only(module: nn.Module, own: set) -> bool:
    return own <= {"weight"} and module.max_norm is None


@register_tangent_rule(nn.Embedding, applies=_table_only)
def _embedding_terms(module: nn.Embedding, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    return _rows_terms(module, first_input(args, kwargs, "input"), delta, G)


SCALED_EMBEDDINGS = tuple(
    f"transformers.models.{package}.modeling_{package}.{name}ScaledWordEmbedding"
    for package, name in (
        ("gemma", "GemmaText"),
        ("gemma2", "Gemma2Text"),
        ("gemma3", "Gemma3Text"),
        ("gemma3n", "Gemma3nText"),
        ("vaultgemma", "VaultGemmaText"),
        ("minicpm3", "MiniCPM3"),
        ("biogpt", "BioGpt"),
        ("trocr", "TrOCR"),
    )
)


@register_tangent_rule(*SCALED_EMBEDDINGS, applies=_table_only)
def _scaled_embedding_terms(module: nn.Embedding, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    # forward: nn.Embedding.forward(ids) * embed_scale (a buffer or a float, cast to the weight's dtype)
    return _rows_terms(module, first_input(args, kwargs, "input_ids", "input"), delta, G, module.embed_scale)


@register_tangent_rule("transformers.models.opt.modeling_opt.OPTLearnedPositionalEmbedding", applies=_table_only)
def _learned_position_terms(module: nn.Embedding, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    # forward(attention_mask, cache_length=0, position_ids=None): rows position + offset, positions counted
    # along the mask (padding at -1) unless given
    names = ("attention_mask", "cache_length", "position_ids")
    given = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
    positions = given.get("position_ids")
    if positions is None:
        mask = given["attention_mask"]
        positions = (torch.cumsum(mask, dim=1) * mask - 1).long()[:, int(given.get("cache_length") or 0) :]
    return _rows_terms(module, positions + module.offset, delta, G)


# nn.LayerNorm itself only: a subclass may change the forward, so it takes the generic tangent.
@register_tangent_rule(
    nn.LayerNorm, applies=lambda module, own: type(module) is nn.LayerNorm and own <= {"weight", "bias"}
)
def _layer_norm_terms(module: nn.LayerNorm, args: tuple, kwargs: dict, delta: torch.Tensor, G: dict) -> dict:
    x = first_input(args, kwargs, "input")
    dt = work_dtype(delta.dtype)
    d = delta.to(dt)
    out = {}
    if "weight" in G:
        normalised = F.layer_norm(x, module.normalized_shape, None, None, module.eps).to(dt)
        out["weight"] = item_dot(normalised * G["weight"].to(dt), d)
    if "bias" in G:
        out["bias"] = _bias_terms(d, G["bias"])
    return out


# -- the generic tangent: forward mode, else double backward ---------------------------------------------------


def reverse_mode_tangent(module: nn.Module, name: str, tangent: torch.Tensor) -> torch.Tensor:
    """G as reverse mode sees it: an embedding's padding row never receives a gradient, so it counts as 0."""
    padding = getattr(module, "padding_idx", None)
    if name == "weight" and isinstance(module, nn.Embedding) and padding is not None:
        tangent = tangent.clone()
        tangent[padding] = 0
    return tangent


def tangent_by_jvp(
    module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
) -> torch.Tensor:
    own = dict(module.named_parameters(recurse=False))

    def call(value):
        return output_tensors(torch.func.functional_call(module, {name: value}, args, kwargs))[output_index]

    return torch.func.jvp(call, (own[name].detach(),), (tangent.to(own[name].dtype),))[1]


def tangent_by_double_backward(
    module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
) -> torch.Tensor:
    """J G through reverse mode only: with g(v) = J^T v (linear in v), J G = grad_v <g(v), G>."""
    own = dict(module.named_parameters(recurse=False))
    with torch.enable_grad():
        value = own[name].detach().requires_grad_(True)
        out = output_tensors(torch.func.functional_call(module, {name: value}, args, kwargs))[output_index]
        v = torch.zeros_like(out, requires_grad=True)
        (grad,) = torch.autograd.grad(out, value, grad_outputs=v, create_graph=True, allow_unused=True)
        if grad is None or not grad.requires_grad:
            return torch.zeros_like(out).detach()
        (result,) = torch.autograd.grad(grad, v, grad_outputs=tangent.to(grad.dtype))
    return result.detach()


def tangent_if_affine(
    module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
) -> torch.Tensor:
    """f(p = G) - f(p = 0): the exact tangent when the module's output is affine in the parameter p (norm
    scales and shifts: y = w * n(x) + b, or Gemma's (1 + w) * n(x); tables, scaled or not). Two plain
    forwards with the parameter's data swapped, several times cheaper than `functional_call` + `jvp`."""
    param = getattr(module, name)
    saved = param.data
    try:
        param.data = tangent.to(saved.dtype)
        at_tangent = output_tensors(module(*args, **kwargs))[output_index]
        param.data = torch.zeros_like(saved)
        at_zero = output_tensors(module(*args, **kwargs))[output_index]
    finally:
        param.data = saved
    return at_tangent - at_zero


class GenericTangents:
    """`exact(...)`: a module's tangent output by forward mode, or by double backward once forward mode has
    failed for the module's class (remembered, so the failure is paid once)."""

    def __init__(self) -> None:
        self.double_backward: set[tuple[type, str]] = set()

    def exact(
        self, module: nn.Module, name: str, tangent: torch.Tensor, args: tuple, kwargs: dict, output_index: int
    ) -> torch.Tensor:
        key = (type(module), name)
        if key not in self.double_backward:
            try:
                return tangent_by_jvp(module, name, tangent, args, kwargs, output_index)
            except Exception:  # any failure of forward mode: reverse mode gives the same numbers
                self.double_backward.add(key)
        try:
            return tangent_by_double_backward(module, name, tangent, args, kwargs, output_index)
        except Exception as err:
            raise GhostUnsupported(type(module), f"neither forward mode nor double backward works: {err}") from err


class GhostUnsupported(UsageError):
    """A module whose per-item terms the engine cannot compute exactly; `module_class` names it. A UsageError:
    the command line shows it as one line (exit 2), whichever pass meets the module first."""

    def __init__(self, module_class: type, reason: str):
        first = str(reason).splitlines()[0] if reason else ""
        super().__init__(
            f"per-item G-effects cannot be computed exactly for module class {module_class.__name__} ({first}); "
            "run without --geffect-instances / --geffect-tokens / --geffect-scatter (totals stay exact)"
        )
        self.module_class = module_class
