"""Where each parameter tensor of a Hugging Face causal LM sits: decoder layer, group, tying.

Discovery is generic: the decoder blocks are the `nn.ModuleList` of blocks (all children of one class, or
of several block classes in a hybrid stack like Jamba's) holding the most parameters, which is `model.layers`, `transformer.h`, `gpt_neox.layers`,
`model.decoder.layers`, ... whatever the architecture calls it (also under a PEFT wrapper).

Groups (DESIGN section 3):
- `embed`: parameters of the input embeddings (`get_input_embeddings()`) and of any other embedding table
  outside the decoder blocks (GPT-2's position table `wpe`); a tied output projection is counted here once.
- `shallow` / `middle` / `deep`: decoder layer `l` of `n` goes to third `floor(3 l / n)`.
- `lm_head`: the output projection (`get_output_embeddings()`) when it is not tied to the input embeddings.
- `other`: everything else (final norm, ...).
Parameters shared by identity are listed once, under the first name `named_parameters()` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

GROUPS = ("embed", "shallow", "middle", "deep", "lm_head", "other")
THIRDS = ("shallow", "middle", "deep")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    numel: int
    layer: int | None  # decoder layer index, None outside the decoder blocks
    group: str


@dataclass
class ParameterLayout:
    """The parameter tensors G-effects are reported over, in `named_parameters()` order."""

    tensors: list[TensorInfo]
    params: list[nn.Parameter] = field(repr=False)
    num_layers: int
    layers_path: str | None  # dotted module path of the decoder blocks
    tied: bool  # output projection shares its weight with the input embeddings

    def __post_init__(self) -> None:
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def index_of(self, param: torch.Tensor) -> int | None:
        """Position of a parameter (by identity), None when it is not tracked (frozen or foreign)."""
        return self._index.get(id(param))

    def describe(self) -> dict:
        """A JSON-ready summary: groups with tensor and element counts, layer count, tying."""
        groups = {g: {"tensors": 0, "numel": 0} for g in GROUPS}
        for info in self.tensors:
            groups[info.group]["tensors"] += 1
            groups[info.group]["numel"] += info.numel
        return {
            "num_layers": self.num_layers,
            "layers_path": self.layers_path,
            "tied": self.tied,
            "numel": sum(t.numel for t in self.tensors),
            "groups": groups,
        }


def third_of_layer(layer: int, num_layers: int) -> str:
    return THIRDS[min(2, (3 * layer) // max(num_layers, 1))]


def _is_layer_stack(module: nn.Module) -> bool:
    """A ModuleList of decoder blocks: one class (Llama, GPT-2, ...), or several block classes (hybrid stacks
    such as Jamba's attention and Mamba layers), each child a block with parameters of its own modules."""
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    if len({type(child) for child in module}) == 1:
        return True
    return all(any(True for _ in child.children()) and any(True for _ in child.parameters()) for child in module)


def find_decoder_layers(model: nn.Module) -> tuple[str | None, nn.ModuleList | None]:
    """The layer stack (`_is_layer_stack`) with the most parameters (ties: the longer one), or (None, None)."""
    best: tuple[int, int] = (0, 0)
    found: tuple[str | None, nn.ModuleList | None] = (None, None)
    for name, module in model.named_modules():
        if not _is_layer_stack(module):
            continue
        size = (sum(p.numel() for p in module.parameters()), len(module))
        if size > best:
            best, found = size, (name, module)
    return found


def _param_ids(module: nn.Module | None) -> set[int]:
    if module is None:
        return set()
    return {id(p) for p in module.parameters()}


def discover_layout(model: nn.Module, trainable_only: bool = True) -> ParameterLayout:
    """Map every (trainable) parameter tensor of `model` to its decoder layer and group."""
    layers_path, layers = find_decoder_layers(model)
    layer_of: dict[int, int] = {}
    if layers is not None:
        for index, block in enumerate(layers):
            for p in block.parameters():
                layer_of.setdefault(id(p), index)
    num_layers = len(layers) if layers is not None else 0

    input_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed_ids = _param_ids(input_emb)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embed_ids |= {id(p) for p in module.parameters() if id(p) not in layer_of}
    output_ids = _param_ids(output_emb)
    tied = (
        bool(embed_ids & output_ids)
        and input_emb is not None
        and output_emb is not None
        and (getattr(output_emb, "weight", None) is getattr(input_emb, "weight", object()))
    )

    tensors: list[TensorInfo] = []
    params: list[nn.Parameter] = []
    for name, p in model.named_parameters():  # yields shared tensors once
        if trainable_only and not p.requires_grad:
            continue
        layer = layer_of.get(id(p))
        if layer is not None:
            group = third_of_layer(layer, num_layers)
        elif id(p) in embed_ids:
            group = "embed"
        elif id(p) in output_ids:
            group = "lm_head"
        else:
            group = "other"
        tensors.append(TensorInfo(name, tuple(p.shape), p.numel(), layer, group))
        params.append(p)
    return ParameterLayout(tensors=tensors, params=params, num_layers=num_layers, layers_path=layers_path, tied=tied)
