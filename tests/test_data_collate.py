"""Prompt templates, label masking (answer tokens + one EOS), dynamic padding and truncation."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from geffect.data.collate import IGNORE_INDEX, collate, encode_prompt, encode_qa, pad_token_id
from geffect.data.templates import TEMPLATES, get_template, template_for_model
from geffect.errors import UsageError

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PAD, EOS, BOS = 0, 1, 2
TEXT = [
    "Question: Where was Ada born?\nAnswer: Ada was born in Lyon.",
    "[INST] Who wrote the book? [/INST] Ada wrote it.",
    "What is the capital of France? Paris.",
]
SPLIT = pre_tokenizers.Whitespace()


def words(text: str) -> list[str]:
    return [w for w, _ in SPLIT.pre_tokenize_str(text)]


VOCAB = {tok: i for i, tok in enumerate(SPECIALS + sorted({w for t in TEXT for w in words(t)}))}


def ids(text: str) -> list[int]:
    """Token ids by direct vocabulary look-up, independent of the tokenizer under test."""
    return [VOCAB[w] for w in words(text)]


def make_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = SPLIT
    # A BOS on every prompt, as Llama tokenizers do; encode_qa must not add one before the answer.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    extra = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>", **extra
    )


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


Q, A = "Where was Ada born?", "Ada was born in Lyon."


@pytest.mark.parametrize(
    ("template", "prompt_text", "answer_text"),
    [
        ("plain", f"Question: {Q}\nAnswer: ", A),
        ("phi", f"Question: {Q}\n", f"Answer: {A}"),  # legacy TOFU: "Answer:" is inside the loss
        ("llama2", f"[INST] {Q} [/INST]", f" {A}"),
    ],
)
def test_encode_qa_masks_prompt_and_appends_one_eos(tokenizer, template, prompt_text, answer_text):
    item = encode_qa(tokenizer, get_template(template), Q, A, index=7)
    prompt, answer = [BOS] + ids(prompt_text), ids(answer_text) + [EOS]
    assert item.input_ids == prompt + answer
    assert item.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert item.index == 7
    assert item.input_ids.count(EOS) == 1
    assert encode_prompt(tokenizer, get_template(template), Q) == prompt


def test_truncation_warns_and_keeps_labels_aligned(tokenizer, caplog):
    full = encode_qa(tokenizer, get_template("plain"), Q, A, index=3)
    with caplog.at_level(logging.WARNING, logger="geffect.data.collate"):
        cut = encode_qa(tokenizer, get_template("plain"), Q, A, index=3, max_length=len(full.input_ids) - 2)
    assert cut.input_ids == full.input_ids[:-2] and cut.labels == full.labels[:-2]
    assert len(caplog.records) == 1 and "item 3" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geffect.data.collate"):
        encode_qa(tokenizer, get_template("plain"), Q, A, max_length=len(full.input_ids))
    assert not caplog.records


def batch_items(tokenizer):
    template = get_template("plain")
    return [
        encode_qa(tokenizer, template, "Where was Ada born?", "Ada was born in Lyon.", index=0),
        encode_qa(tokenizer, template, "What is the capital of France?", "Paris.", index=5),
    ]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_each_row(tokenizer, side):
    items = batch_items(tokenizer)
    batch = collate(items, pad_id=PAD, padding_side=side)
    width = max(len(i.input_ids) for i in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["index"].tolist() == [0, 5]
    for row, item in enumerate(items):
        n, pad = len(item.input_ids), width - len(item.input_ids)
        real = slice(0, n) if side == "right" else slice(pad, width)
        padding = slice(n, width) if side == "right" else slice(0, pad)
        assert batch["input_ids"][row, real].tolist() == item.input_ids
        assert batch["labels"][row, real].tolist() == item.labels
        assert batch["attention_mask"][row].tolist() == (
            [1] * n + [0] * pad if side == "right" else [0] * pad + [1] * n
        )
        assert (batch["input_ids"][row, padding] == PAD).all() and (batch["labels"][row, padding] == IGNORE_INDEX).all()


def test_qa_collator_pad_id_falls_back_to_eos(tokenizer):
    assert pad_token_id(tokenizer) == PAD
    no_pad = make_tokenizer(with_pad=False)
    assert no_pad.pad_token_id is None and pad_token_id(no_pad) == EOS
    batch = collate(batch_items(no_pad), pad_token_id(no_pad), padding_side="left")
    assert batch["input_ids"][1, 0].item() == EOS and batch["attention_mask"][1, 0].item() == 0


def test_padded_batch_loss_is_token_mean_over_answers(tokenizer):
    """HF's loss on a right-padded batch = mean NLL over answer+EOS tokens, computed item by item (float64)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).double().eval()
    items = batch_items(tokenizer)
    batch = collate(items, pad_id=PAD, padding_side="right")
    with torch.no_grad():
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        nll, count = 0.0, 0
        for item in items:
            logits = model(input_ids=torch.tensor([item.input_ids])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            for pos, target in enumerate(item.labels[1:]):
                if target != IGNORE_INDEX:
                    nll -= logp[pos, target].item()
                    count += 1
    assert count == sum(len(ids(a)) + 1 for a in ("Ada was born in Lyon.", "Paris."))
    assert loss.item() == pytest.approx(nll / count, rel=1e-6)  # HF casts logits to float32 for the loss


def test_template_lookup():
    assert set(TEMPLATES) == {"phi", "llama2", "plain", "chat"}
    with pytest.raises(UsageError, match="unknown template 'gpt'"):
        get_template("gpt")
    assert template_for_model("meta-llama/Llama-2-7b-chat-hf").name == "llama2"
    assert template_for_model("locuslab/tofu_ft_llama2-7b").name == "llama2"
    assert template_for_model("microsoft/phi-1_5").name == "phi"
    assert template_for_model("/models/tiny").name == "plain"


def test_chat_template_uses_tokenizer(tokenizer):
    chat = get_template("chat")
    with pytest.raises(UsageError, match="chat_template"):
        chat.prompt(Q, tokenizer)
    with_chat = make_tokenizer()
    with_chat.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    assert chat.prompt(Q, with_chat) == f"[INST] {Q} [/INST]"
    item = encode_qa(with_chat, chat, Q, A)
    assert item.input_ids == [BOS] + ids(f"[INST] {Q} [/INST]") + ids(A) + [EOS]
