"""Tiny random causal LMs for the G-effect tests, and the tests of parameter discovery (effects.blocks).

Other test_effects_* files import the builders from here.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PhiConfig

from geffect.effects.blocks import GROUPS, discover_layout, find_decoder_layers, third_of_layer

VOCAB = 48
PAD = 0


def _config(arch: str, tied: bool, layers: int = 3):
    common = dict(
        vocab_size=VOCAB,
        num_hidden_layers=layers,
        tie_word_embeddings=tied,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        return LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_key_value_heads=1, **common)
    if arch == "gpt2":
        return GPT2Config(
            n_embd=16,
            n_head=2,
            n_positions=32,
            n_layer=layers,
            **{k: v for k, v in common.items() if k != "num_hidden_layers"},
        )
    if arch == "neox":
        return GPTNeoXConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, **common)
    if arch == "phi":
        return PhiConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, **common)
    raise ValueError(arch)


ARCHS = [("llama", True), ("llama", False), ("gpt2", True), ("neox", False), ("phi", True), ("phi", False)]
ARCH_IDS = [f"{a}-{'tied' if t else 'untied'}" for a, t in ARCHS]


def tiny_model(arch: str = "llama", tied: bool = False, dtype=torch.float64, seed: int = 0, layers: int = 3):
    """A random model in eval mode. SDPA attention computes softmax in the model dtype (eager Llama uses fp32)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, tied, layers), attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def tiny_batch(
    batch_size: int = 3, width: int = 9, seed: int = 1, first_index: int = 0, padding: str = "right"
) -> dict:
    """Random QA-shaped batch: 2-3 masked prompt tokens, answers, and padding on one row (pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, width), generator=gen)
    labels = ids.clone()
    attention = torch.ones_like(ids)
    for row in range(batch_size):
        labels[row, : 2 + row % 2] = -100
    short = width - 3  # row 0 is shorter: padded
    if padding == "right":
        ids[0, short:], attention[0, short:], labels[0, short:] = PAD, 0, -100
    else:
        ids[0] = torch.cat([torch.full((3,), PAD), ids[0, :short]])
        labels[0] = torch.cat([torch.full((3,), -100), labels[0, :short]])
        attention[0, :3] = 0
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "labels": labels,
        "index": torch.arange(first_index, first_index + batch_size),
    }


def random_direction(layout, seed: int = 2) -> list[torch.Tensor]:
    """A random G (not a gradient: e.g. the padding row of the embeddings is not zero)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in layout.params]


# -- tests of effects.blocks ---------------------------------------------------------------------------------

EXPECTED_LAYERS = {"llama": "model.layers", "gpt2": "transformer.h", "neox": "gpt_neox.layers", "phi": "model.layers"}


@pytest.mark.parametrize("arch,tied", ARCHS, ids=ARCH_IDS)
def test_layout_groups_cover_every_parameter_once(arch, tied):
    model = tiny_model(arch, tied)
    layout = discover_layout(model)
    assert layout.layers_path == EXPECTED_LAYERS[arch]
    assert layout.num_layers == 3
    unique = {id(p): p.numel() for p in model.parameters()}
    summary = layout.describe()
    assert summary["numel"] == sum(unique.values())
    assert sum(g["numel"] for g in summary["groups"].values()) == sum(unique.values())
    assert layout.tied is tied
    embed_weight = model.get_input_embeddings().weight
    assert layout.tensors[layout.index_of(embed_weight)].group == "embed"
    head = model.get_output_embeddings().weight
    if tied:
        # only an untied bias (Phi) may remain in lm_head; the shared weight counts once, under embed
        assert all(info.name.endswith("bias") for info in layout.tensors if info.group == "lm_head")
        assert layout.index_of(head) == layout.index_of(embed_weight)
    else:
        assert layout.tensors[layout.index_of(head)].group == "lm_head"
    for info in layout.tensors:
        if info.layer is not None:
            assert info.group == ("shallow", "middle", "deep")[info.layer]
            assert f".{info.layer}." in info.name
        else:
            assert info.group in ("embed", "lm_head", "other")
    assert summary["groups"]["other"]["tensors"] >= 1  # the final norm


def test_gpt2_position_embeddings_count_as_embed():
    layout = discover_layout(tiny_model("gpt2", True))
    groups = {info.name: info.group for info in layout.tensors}
    assert groups["transformer.wpe.weight"] == "embed"
    assert groups["transformer.ln_f.weight"] == "other"


def test_thirds_split_layers_by_index():
    assert [third_of_layer(i, 32) for i in (0, 10, 11, 21, 22, 31)] == [
        "shallow",
        "shallow",
        "middle",
        "middle",
        "deep",
        "deep",
    ]
    assert [third_of_layer(i, 2) for i in (0, 1)] == ["shallow", "middle"]
    assert [third_of_layer(i, 1) for i in (0,)] == ["shallow"]


def test_decoder_layers_found_under_a_wrapper_and_frozen_parameters_skipped():
    model = tiny_model("llama", False)
    wrapper = torch.nn.Module()
    wrapper.inner = model
    wrapper.norms = torch.nn.ModuleList([torch.nn.LayerNorm(4) for _ in range(7)])  # longer, but tiny
    path, layers = find_decoder_layers(wrapper)
    assert path == "inner.model.layers" and layers is model.model.layers
    model.model.layers[0].mlp.requires_grad_(False)
    layout = discover_layout(model)
    assert not any(".0.mlp." in name for name in layout.names)
    assert "model.layers.0.self_attn.q_proj.weight" in layout.names
    assert set(GROUPS) == set(layout.describe()["groups"])


def test_streamed_dots_equal_full_gradient_dots_and_keep_p_grad():
    """Per-tensor dots streamed out of the backward (one tensor's gradient at a time) equal the dots of the
    whole gradient, and the parameters' .grad (the step's G) is left exactly as it was."""
    from geffect.effects.blocks import discover_layout
    from geffect.effects.dots import streamed_dots, tensor_dots
    from geffect.effects.tokens import risk_terms

    model = tiny_model("llama", True)
    layout = discover_layout(model)
    direction = random_direction(layout, seed=5)
    for p, g in zip(layout.params, random_direction(layout, seed=6)):
        p.grad = g.clone()
    before = [p.grad.clone() for p in layout.params]
    batch = tiny_batch(3, 9)
    risk, _, _ = risk_terms(model, batch)
    expected = tensor_dots(torch.autograd.grad(risk, layout.params, allow_unused=True, retain_graph=True), direction)
    streamed = streamed_dots(risk, layout.params, direction)
    assert torch.allclose(streamed, expected, rtol=1e-12, atol=1e-15)
    assert all(torch.equal(p.grad, b) for p, b in zip(layout.params, before))


def test_hybrid_stacks_of_several_block_classes_are_the_decoder_layers():
    """Jamba-like: attention and Mamba-like blocks of two classes in one ModuleList are the layers; a list
    of bare leaf modules of mixed classes is not a stack of blocks."""
    from torch import nn

    class AttentionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

    class MixerBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(8, 16)

    model = nn.Module()
    model.layers = nn.ModuleList([MixerBlock(), AttentionBlock(), MixerBlock(), AttentionBlock()])
    model.heads = nn.ModuleList([nn.Linear(8, 64), nn.LayerNorm(8)])  # more parameters, but leaves
    path, layers = find_decoder_layers(model)
    assert path == "layers" and layers is model.layers
    layout = discover_layout(model)
    assert layout.num_layers == 4 and [info.layer for info in layout.tensors][:2] == [0, 0]
