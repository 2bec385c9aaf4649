"""Answer-only logits: the risk and per-token losses equal those of the full forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geffect.effects.tokens import risk_terms
from geffect.models.answer_logits import answer_logits, first_scored_position
from test_effects_models import tiny_batch, tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_risk_terms_equal_the_full_forward_and_skip_prompt_positions(arch):
    model = tiny_model(arch, False)
    batch = tiny_batch(3, 9, seed=5)
    labels = batch["labels"]
    positions = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: positions.append(args[0].shape[1]))
    risk, ce, n = risk_terms(model, batch)
    start = first_scored_position(labels)
    assert start == 1  # the rows' prompts have 2 or 3 tokens: position 1 predicts the first label
    assert positions == [labels.shape[1] - 1 - start]

    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected_loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    expected_ce = F.cross_entropy(
        full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
    )
    assert ce.shape == labels.shape and torch.all(ce[:, 0] == 0)
    assert torch.allclose(ce[:, 1:].flatten(), expected_ce, rtol=1e-12, atol=1e-12)
    assert n == int((labels[:, 1:] != -100).sum())
    assert float(risk) == pytest.approx(float(expected_ce.sum()) / n, rel=1e-12)
    assert float(risk) == pytest.approx(float(expected_loss), rel=1e-6)  # transformers' loss runs in fp32


def test_a_row_without_labels_keeps_every_position():
    model = tiny_model("llama", False)
    batch = tiny_batch(2, 7, seed=2)
    batch["labels"][1] = -100
    logits, start = answer_logits(
        model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, batch["labels"]
    )
    assert start == 0 and logits.shape[1] == 6
