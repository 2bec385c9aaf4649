"""Batched greedy generation with left padding: the ROUGE metrics of the evaluation and the exact-match
accuracy of fine-tuning."""

from __future__ import annotations

from typing import Sequence

import torch

from geffect.data.collate import EncodedItem, collate, encode_prompt, pad_token_id
from geffect.data.templates import Template
from geffect.progress import progress as report_progress
from geffect.tokens import IGNORE_INDEX

MAX_NEW_TOKENS = 200


def generate_answers(
    model,
    tokenizer,
    template: Template,
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    desc: str = "generating",
    progress: bool | None = None,
) -> list[str]:
    """The greedy continuation of each question's prompt, decoded without special tokens, cut at EOS, stripped.

    Prompts are left-padded (as generation requires) and batched in prompt-length order to keep padding
    small. `progress`: None shows a bar on a terminal and plain lines otherwise (geffect.progress), False hides it. The model generates in eval mode; its
    training mode is restored afterwards.
    """
    prompts = [encode_prompt(tokenizer, template, q) for q in questions]
    items = [EncodedItem(input_ids=ids, labels=[IGNORE_INDEX] * len(ids), index=i) for i, ids in enumerate(prompts)]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    texts: list[str | None] = [None] * len(items)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    try:
        for rows in report_progress(batches, desc=desc, enabled=progress):
            batch = collate([items[i] for i in rows], pad, padding_side="left")
            with torch.no_grad():
                output = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :].cpu()
            for row, tokens in zip(rows, new_tokens):
                texts[row] = _decode_until_eos(tokenizer, tokens.tolist())
    finally:
        model.train(was_training)
    return texts  # type: ignore[return-value]


def _decode_until_eos(tokenizer, tokens: list[int]) -> str:
    # Finished rows are padded after their EOS; pad may equal EOS, so cut at the first EOS explicitly.
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()
