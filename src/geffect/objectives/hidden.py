"""Hidden states of a decoder layer, captured during the same forward pass that yields the logits (RMU)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from geffect.errors import UsageError
from geffect.objectives.base import Batch
from geffect.objectives.tokens import forward_logits, widen
from geffect.tokens import IGNORE_INDEX

# Last name component of the ModuleList holding the decoder blocks in common HF architectures
# (model.layers, transformer.h, gpt_neox.layers, transformer.blocks, encoder.layer ...).
_LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks of any HF causal LM (also under DDP/peft wrappers)."""
    candidates = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES
    ]
    if not candidates:
        raise UsageError(
            f"cannot find the decoder layers of {type(model).__name__}; RMU and MSE need a model.layers-like list"
        )
    return max(candidates, key=len)


def resolve_layer(model: nn.Module, layer: int) -> int:
    """Index of the steered layer; -1 picks the layer at 7/32 of the depth (WMDP/OpenUnlearning: 7 of 32)."""
    n_layers = len(decoder_layers(model))
    if layer == -1:
        return (7 * n_layers) // 32
    if not 0 <= layer < n_layers:
        raise UsageError(
            f"layer {layer} is out of range for a model with {n_layers} decoder layers; use 0..{n_layers - 1} or -1"
        )
    return layer


@contextmanager
def _capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    cache: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        cache.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield cache
    finally:
        handle.remove()


def forward_with_hidden(model: nn.Module, batch: Batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, output of decoder layer `layer` [B, T, d]) from one forward pass."""
    with _capture(decoder_layers(model)[layer]) as cache:
        logits = forward_logits(model, batch)
    return logits, cache[0]


def resolve_hidden_state(model: nn.Module, index: int) -> int:
    """An index into HF's `output_hidden_states` tuple (0 = embeddings, n = after the final norm); -1 picks n,
    the paper code's `hidden_states[32]` of a 32-layer model."""
    n_layers = len(decoder_layers(model))
    if index == -1:
        return n_layers
    if not 0 <= index <= n_layers:
        raise UsageError(
            f"hidden-state index {index} is out of range for a model with {n_layers} decoder layers; "
            f"use 0..{n_layers} or -1"
        )
    return index


def forward_with_hidden_state(model: nn.Module, batch: Batch, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, `hidden_states[index]` [B, T, d]) from one forward pass with `output_hidden_states`."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, output_hidden_states=True
    )
    return out.logits, out.hidden_states[index]


def hidden_for(model: nn.Module, batch: Batch, hparams) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the steered hidden state) as `hparams` count layers: `hidden_states_index` 0 = the output of decoder
    layer `layer` (OpenUnlearning's module_regex model.layers.L), 1 = HF's hidden_states[layer] (the paper code)."""
    layer = int(hparams["layer"])
    if hparams.get("hidden_states_index", 0.0):
        return forward_with_hidden_state(model, batch, resolve_hidden_state(model, layer))
    return forward_with_hidden(model, batch, resolve_layer(model, layer))


def activation_mse(hidden: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OpenUnlearning's RMU distance: mean over items of (mean over the item's answer positions of mean_d (h-t)^2).

    Positions are those whose own label is valid (labels != -100, not shifted), as in OpenUnlearning/WMDP.
    """
    mask = (labels != IGNORE_INDEX).to(hidden.device)
    hidden = widen(hidden)
    sq = (hidden - target.to(hidden.dtype)).pow(2).mean(dim=-1)
    per_item = (sq * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_item.mean()
