"""Shared helpers of the training tests (no tests here): a tiny benchmark and a tiny random Llama on disk.

Built once per test session (cached in this module) under pytest's base temporary folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from safetensors.torch import load_file

from geffect.training.config import UnlearnConfig

TINY_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@functools.cache
def tiny_setup(root: str) -> tuple[str, str]:
    """(data folder, model folder): the built-in benchmark with 10 authors and a random 2-layer Llama."""
    from geffect.data.synth import write_benchmark
    from geffect.models.tiny import benchmark_texts, build_tiny_model, train_tokenizer

    root_path = Path(root)
    data, model_dir = root_path / "bench", root_path / "model"
    write_benchmark(data, n_authors=10, seed=0, overwrite=True)
    tokenizer = train_tokenizer(benchmark_texts(str(data)), vocab_size=300, min_frequency=2)
    model = build_tiny_model(tokenizer, seed=0, **TINY_MODEL)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(data), str(model_dir)


def tiny_paths(tmp_path_factory) -> tuple[str, str]:
    return tiny_setup(str(tmp_path_factory.getbasetemp() / "training_tiny"))


def config(data: str, model: str, out: Path, **changes) -> UnlearnConfig:
    """A small, fast run: 20 forget items, 2 per micro-batch."""
    values = dict(
        model=model,
        data=data,
        out=str(out),
        method="NPO",
        lr=1e-3,
        epochs=1,
        batch_size=2,
        grad_accum=2,
        warmup_epochs=0.5,
        progress=False,
    )
    values.update(changes)
    return UnlearnConfig(**values)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))
