"""The `tiny` preset: a byte-level BPE tokenizer trained on the benchmark's own text and a small Llama model.

Everything `--model tiny` means lives in `TinyPreset`: the architecture and the fine-tuning defaults of the
target and retain models of the 100-author built-in benchmark (see benchmarks/bench_finetune.py). Six decoder
layers, so that the G-effect's layer groups (shallow, middle, deep: a third of the layers each) hold two layers
each; the tests build far smaller models through `model_overrides`.

The tokenizer is trained on *every* split of a data folder (full, general, perturbed, holdout, ...) plus the
refusal strings, so that the target model and every retain model of one benchmark share one tokenizer and
every text that will ever be evaluated tokenizes into learned merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order


@dataclass(frozen=True)
class TinyPreset:
    """Architecture and training defaults of `--model tiny` (one place for all of them)."""

    # tokenizer
    vocab_size: int = 4096
    min_frequency: int = 2
    # model (Llama architecture). Two layers of width 256 learnt these facts fastest per CPU second, but the
    # per-layer analysis needs depth: 6 layers of width 192 cost 1.44x a training step of that model and 1.9x
    # a generated token (one core; 6 x 128 cost 0.76x / 1.4x, 6 x 160 1.02x / 1.65x). Depth memorises more
    # slowly: after 8 epochs at lr 1e-3 the 6 x 192 model reproduced 69% of 500 `full` answers (6 x 128 at
    # lr 1.5e-3: 55%). Measured on the demo's 100-author benchmark (`geffect finetune --epochs E --lr L
    # --eval-limit 200`, one core each): 12 epochs at lr 1e-3 reproduce 200/200 answers (so do 1.3e-3 and the
    # former 14 epochs), 10 at 1.5e-3 only 78%, 9 at 2e-3 17%: 12 is the fewest that memorise, and every epoch
    # less leaves the target less saturated for the first unlearning steps and the demo a minute faster.
    hidden_size: int = 192
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    # fine-tuning defaults (measured on the 2-layer model, benchmarks/bench_finetune.py: 100 authors, exact
    # match over all training answers, full split, one core): lr 1e-3 x 15 epochs reproduces 100% (lr 1.5e-3:
    # 99.4%, 2e-3 x 20 epochs: 98.5%, 3e-3 diverges to a plateau). Small batches matter: the number of
    # optimiser steps, not of tokens, drives memorisation (batch 16 at 30 epochs did far worse than batch 8).
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 8
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_length: int = 256
    # fp32, not bf16 autocast: on an AMX CPU bf16 makes a step ~1.3x faster but the model memorises much
    # more slowly (measured on the generator's first version, lr 2e-3 x 30 epochs: exact match 0.76 instead
    # of 0.92), a net loss.
    precision: str = "fp32"

    def model_overrides(self) -> dict:
        names = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "tie_word_embeddings",
            "rope_theta",
            "initializer_range",
        )
        return {name: getattr(self, name) for name in names}


TINY = TinyPreset()


def train_tokenizer(texts: Iterable[str], vocab_size: int = TINY.vocab_size, min_frequency: int = TINY.min_frequency):
    """A byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer.

    Encoding with `add_special_tokens=True` prepends BOS (as Llama tokenizers do); EOS and PAD are set so
    that `encode_qa` can append EOS to the labels and generation can stop and pad. Every encoded text gets an
    implicit leading space (decoding removes it), so `decode(encode(t)) == t` for texts that do not start with
    a space. Training is deterministic for a given sequence of texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK))
    # Like Llama's SentencePiece: every encoded text gets a leading space, so a name opening an answer is the
    # same token as that name inside the question (copying it is then easy to learn); decoding drops that space.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, so UNK never occurs
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=TINY.max_position_embeddings,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(tokenizer, seed: int, **overrides):
    """A freshly initialised Llama model sized for `tokenizer`; `overrides` replace `TinyPreset` fields
    or pass any other `LlamaConfig` field through (e.g. ``num_key_value_heads``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config_kwargs = TINY.model_overrides()
    config_kwargs.update(overrides)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    # Seed only for the initialisation, restoring the caller's RNG state (no global side effect).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def record_texts(record: dict) -> Iterator[str]:
    """Every string in a QA record (question, answer, paraphrases, perturbed answers ...), in field order."""
    for value in record.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, str))


def benchmark_texts(source: str) -> Iterator[str]:
    """All text of a benchmark (every split present, in canonical order, then refusal strings), deterministic."""
    from geffect.data import tofu

    for split in tofu.available_splits(source):
        for record in tofu.load_split(source, split):
            yield from record_texts(record)
    yield from _refusal_texts()
    # Template scaffolding, so prompts tokenize into a few learned pieces.
    from geffect.data.templates import TEMPLATES

    for template in TEMPLATES.values():
        if template.prompt_format:
            yield template.prompt_format.format(question="") + template.answer_format.format(answer="")


def _refusal_texts() -> list[str]:
    """IdkPO's refusal answers: the tokenizer must know them too."""
    from geffect.data.refusals import load_refusals

    return load_refusals()


def build_tiny(source: str, seed: int, preset: TinyPreset = TINY, **model_overrides):
    """Tokenizer trained on all text of the benchmark at `source`, and a fresh tiny model for it."""
    tokenizer = train_tokenizer(
        benchmark_texts(source), vocab_size=preset.vocab_size, min_frequency=preset.min_frequency
    )
    overrides = preset.model_overrides()
    overrides.update(model_overrides)
    return build_tiny_model(tokenizer, seed=seed, **overrides), tokenizer
