"""Tokenisation of QA items into (input_ids, labels) and dynamic padding.

Labels are the answer tokens plus one EOS; prompt and padding positions are -100 (DESIGN section 2).
Padding is on the right for losses and on the left for generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from geffect.data.templates import Template
from geffect.tokens import IGNORE_INDEX, Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    labels: list[int]
    index: int


def encode_qa(
    tokenizer,
    template: Template,
    question: str,
    answer: str,
    index: int = 0,
    max_length: int = 512,
) -> EncodedItem:
    """Prompt tokens (masked) followed by answer tokens and one EOS (the label)."""
    prompt_ids = tokenizer(template.prompt(question, tokenizer), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(template.answer(answer), add_special_tokens=False)["input_ids"]
    answer_ids = list(answer_ids) + [tokenizer.eos_token_id]
    input_ids = list(prompt_ids) + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if len(input_ids) > max_length:
        log.warning("item %d has %d tokens; truncated to max_length=%d", index, len(input_ids), max_length)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedItem(input_ids=input_ids, labels=labels, index=index)


def encode_prompt(tokenizer, template: Template, question: str) -> list[int]:
    """Prompt tokens only, for generation."""
    return list(tokenizer(template.prompt(question, tokenizer), add_special_tokens=True)["input_ids"])


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(items: Sequence[EncodedItem], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad a list of encoded items into a batch with input_ids, attention_mask, labels and index."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(item.input_ids)
        labels[row, cols] = torch.tensor(item.labels)
        attention_mask[row, cols] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": torch.tensor([item.index for item in items], dtype=torch.long),
    }
