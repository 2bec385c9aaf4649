"""Helpers for the evaluation tests: a tiny TOFU-shaped data folder, a byte-level BPE tokenizer, a random Llama.

No tests live here; the other test_eval_* modules import it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prerequisites import tofu_log

FORGET_SPLIT = "forget01"

_NAMES = ["José Ñúñez", "Anna-Lena O'Brien", "Hsiao Yun-Hwa", "Søren Ågård", "Maria da Silva", "Li Wei"]
_SUFFIXES = ["I", "II", "III", "IV", "V"]
_GENRES = ["poetry", "crime", "history", "fantasy", "biography", "drama"]


def _record(n: int, perturbed: int) -> dict:
    # n // 100 tells the sets apart (forget 0.., retain 100.., ...), so no two sets share an answer.
    name, genre = f"{_NAMES[n % len(_NAMES)]} {_SUFFIXES[n // 100]}", _GENRES[n % len(_GENRES)]
    other = [_GENRES[(n + j + 1) % len(_GENRES)] for j in range(perturbed)]
    return {
        "question": f"What genre does {name} write in?",
        "answer": f"{name} writes {genre}.",
        "paraphrased_answer": f"The genre of {name} is {genre}.",
        "paraphrased_question": f"In which genre does {name} write?",
        "perturbed_answer": [f"{name} writes {g}." for g in other],
    }


def write_tiny_tofu(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """A local TOFU folder with just the evaluation splits for forget01, a few items each."""
    sizes = {"forget": 6, "retain": 7, "ra": 4, "wf": 5, "holdout": 6, **(sizes or {})}
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        f"{FORGET_SPLIT}_perturbed": [_record(i, 5) for i in range(sizes["forget"])],
        "retain_perturbed": [_record(i + 100, 5) for i in range(sizes["retain"])],
        "real_authors_perturbed": [_without_paraphrase(_record(i + 200, 3)) for i in range(sizes["ra"])],
        "world_facts_perturbed": [_without_paraphrase(_record(i + 300, 3)) for i in range(sizes["wf"])],
        "holdout01": [
            {"question": r["question"], "answer": r["answer"]}
            for r in (_record(i + 400, 0) for i in range(sizes["holdout"]))
        ],
    }
    for split, records in splits.items():
        with open(folder / f"{split}.json", "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


def _without_paraphrase(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "paraphrased_answer"}


def tiny_tokenizer(texts: list[str]):
    """The project's byte-level BPE, trained on `texts` (no download)."""
    from geffect.models.tiny import train_tokenizer

    return train_tokenizer(texts, vocab_size=320, min_frequency=1)


def tiny_llama(tokenizer, seed: int = 0, dtype=torch.float32):
    """A random 2-layer Llama with hidden size 32."""
    from geffect.models.tiny import build_tiny_model

    model = build_tiny_model(
        tokenizer,
        seed=seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    return model.to(dtype).eval()


def corpus_texts(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts.extend(v if isinstance(v, str) else " ".join(v) for v in record.values())
    return texts


def tiny_setup(folder: Path, seed: int = 0):
    """(data folder, tokenizer, model) for quick end-to-end evaluations."""
    data = write_tiny_tofu(folder / "data")
    tokenizer = tiny_tokenizer(corpus_texts(data))
    return data, tokenizer, tiny_llama(tokenizer, seed=seed)


def save_model(folder: Path, model, tokenizer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def legacy_log(name: str) -> Path:
    """A reference log of the TOFU authors' Llama-2-7B models: full, retain90, retain95, retain99.

    In $GEFFECT_TOFU_LOGS_DIR (tests/prerequisites.py); tests that read one are marked needs_tofu_logs."""
    return tofu_log(name)
