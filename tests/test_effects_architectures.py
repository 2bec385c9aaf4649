"""Per-item and per-token G-effects on architectures beyond the core four, in float64 against per-item autograd.

Tiny random configs (hidden 16, 2 layers, vocabulary 48) of Gemma, Gemma2, Gemma3, OPT, Bloom, Falcon, Qwen2,
Mistral, Mixtral and Qwen2-MoE (mixtures of experts) and Jamba (a hybrid stack of attention and Mamba
layers). Each model gets a GA direction and an NPO+KL direction (the objectives' own gradients), right and left
padding where the model supports it; items, tokens, groups, layers and totals are compared with plain
autograd, one backward per item and per token.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

from geffect.effects.blocks import discover_layout
from geffect.effects.engine import ghost_effect, gradient_effect
from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective, parse_method_spec
from test_effects_ghost import reference_items_and_tokens
from test_effects_models import PAD, VOCAB, tiny_batch

LLAMA_LIKE = dict(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_key_value_heads=1, head_dim=8)


def _config(arch: str, dropout: float = 0.0):
    common = dict(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    moe = dict(num_experts_per_tok=2, **LLAMA_LIKE, **common)
    builders = {
        "gemma": lambda: tf.GemmaConfig(**LLAMA_LIKE, **{**common, "tie_word_embeddings": True}),
        "gemma2": lambda: tf.Gemma2Config(**LLAMA_LIKE, sliding_window=4, **common),
        "gemma3": lambda: tf.Gemma3TextConfig(**LLAMA_LIKE, sliding_window=4, **common),
        "qwen2": lambda: tf.Qwen2Config(**LLAMA_LIKE, **{**common, "tie_word_embeddings": True}),
        "mistral": lambda: tf.MistralConfig(**LLAMA_LIKE, sliding_window=4, **common),
        "mixtral": lambda: tf.MixtralConfig(num_local_experts=4, **moe),
        "qwen2moe": lambda: tf.Qwen2MoeConfig(
            num_experts=4, moe_intermediate_size=12, shared_expert_intermediate_size=12, **moe
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=16,
            ffn_dim=24,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
            dropout=dropout,
            **common,
        ),
        "bloom": lambda: tf.BloomConfig(
            hidden_size=16, n_head=2, n_layer=2, **{k: v for k, v in common.items() if k != "num_hidden_layers"}
        ),
        "falcon": lambda: tf.FalconConfig(
            hidden_size=16, num_attention_heads=2, new_decoder_architecture=False, **common
        ),
        "jamba": lambda: tf.JambaConfig(
            hidden_size=16,
            intermediate_size=24,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_experts=2,
            num_experts_per_tok=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            attn_layer_period=2,
            attn_layer_offset=1,
            mamba_d_state=4,
            mamba_dt_rank=4,
            **common,
        ),
    }
    return builders[arch]()


EAGER = {"gemma2", "bloom"}  # no SDPA attention in transformers for these
EXPERTS = {"mixtral", "qwen2moe", "jamba"}  # the grouped-mm experts kernel has no float64: the eager loop


def arch_model(arch: str, dropout: float = 0.0, dtype=torch.float64, seed: int = 0):
    """A tiny random model of `arch` in eval mode."""
    torch.manual_seed(seed)
    extra = {"experts_implementation": "eager"} if arch in EXPERTS else {}
    model = tf.AutoModelForCausalLM.from_config(
        _config(arch, dropout), attn_implementation="eager" if arch in EAGER else "sdpa", dtype=dtype, **extra
    )
    return model.eval()


# Relative tolerances (items and tensors, tokens) where a float64 model still computes in float32; 1e-10 elsewhere.
FLOAT32_INSIDE = {
    # GemmaRMSNorm multiplies by (1 + weight) in float32: its tangent is float32-exact; forward-mode tokens too
    "gemma": (1e-7, 1e-6),
    "gemma2": (1e-7, 1e-6),
    "gemma3": (1e-7, 1e-6),
    # Qwen2/Mistral RMSNorm: variance in float32 (reverse mode exact, the forward-mode tokens float32-exact)
    "qwen2": (1e-10, 1e-6),
    "mistral": (1e-10, 1e-6),
    # routers' softmax in float32; router and expert tensors (tokens flattened) take the forward-mode item path
    "mixtral": (1e-7, 1e-6),
    "qwen2moe": (1e-7, 1e-6),
    # Mamba mixer: float32 RMSNorms on dt/B/C, and its tangent by double backward (functorch refuses its copy_)
    "jamba": (1e-6, 1e-6),
}
# Eager attention fills a fully masked (left-padding) query row with NaN in the model itself: right padding only.
RIGHT_ONLY = EAGER
CASES = [
    (arch, method, padding, tokens)
    for arch in ("gemma", "gemma2", "opt", "bloom", "falcon", "qwen2", "mistral", "mixtral")
    for method, padding, tokens in (("GA", "right", True), ("NPO+KL", "right" if arch in RIGHT_ONLY else "left", False))
] + [("gemma3", "GA", "left", True), ("qwen2moe", "NPO+KL", "right", False), ("jamba", "NPO+KL", "right", False)]


def objective_direction(model, layout, method: str, padding: str) -> list[torch.Tensor]:
    """G = the gradient of `method`'s loss on a forget batch (and a retain batch for its retain term)."""
    name, retain_loss = parse_method_spec(method)
    objective = build_objective(ObjectiveConfig(method=name, retain_loss=retain_loss))
    batch = UnlearnBatch(
        forget=tiny_batch(2, 8, seed=11, padding=padding), retain=tiny_batch(2, 8, seed=12, padding=padding)
    )
    out = objective(model, batch, copy.deepcopy(model))
    return [g.detach() for g in torch.autograd.grad(out.loss, layout.params, allow_unused=True)]


def _assert_tokens(effect, batch, ref_tokens, atol: float) -> None:
    for row in range(batch["labels"].shape[0]):
        valid = (batch["labels"][row] != -100).clone()
        valid[0] = False
        got = torch.tensor(effect.tokens[row], dtype=torch.float64)
        torch.testing.assert_close(got, ref_tokens[row][valid], rtol=0, atol=atol)
        assert sum(effect.tokens[row]) == pytest.approx(effect.items[row], abs=atol)


@pytest.mark.parametrize("arch,method,padding,tokens", CASES, ids=["-".join(map(str, c[:3])) for c in CASES])
def test_items_tokens_groups_layers_equal_per_item_autograd(arch, method, padding, tokens):
    model = arch_model(arch)
    layout = discover_layout(model)
    assert layout.num_layers == 2
    assert layout.layers_path == {
        "opt": "model.decoder.layers",
        "bloom": "transformer.h",
        "falcon": "transformer.h",
    }.get(arch, "model.layers")
    G = objective_direction(model, layout, method, padding)
    batch = tiny_batch(2, 8, seed=1, padding=padding)
    ref_items, ref_tokens = reference_items_and_tokens(model, layout, batch, G, tokens)
    plain = gradient_effect(model, layout, [batch], G)
    effect = ghost_effect(model, layout, [batch], G, tokens=tokens)
    scale = float(ref_items.abs().max())
    rtol, token_rtol = FLOAT32_INSIDE.get(arch, (1e-10, 1e-10))

    items = torch.tensor([effect.items[i] for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(items, ref_items, rtol=0, atol=rtol * scale)
    assert plain.total == pytest.approx(float(ref_items.sum()), abs=rtol * scale)
    torch.testing.assert_close(effect.per_tensor, plain.per_tensor, rtol=0, atol=rtol * scale)
    assert sum(effect.items.values()) == pytest.approx(effect.total, abs=rtol * scale)
    if tokens:
        _assert_tokens(effect, batch, ref_tokens, token_rtol * scale)

    ghost, exact = effect.breakdown, plain.breakdown
    for group, value in exact.groups().items():
        assert ghost.groups()[group] == pytest.approx(value, abs=rtol * scale)
    assert ghost.layers() == pytest.approx(exact.layers(), abs=rtol * scale)
    assert len(ghost.layers()) == 2 and all(v != 0 for v in ghost.layers())
    # every decoder-layer tensor is in a layer (hybrid stacks too): "other" holds the final norm only
    assert all(info.layer is not None for info in layout.tensors if ".layers." in info.name or ".h." in info.name)
