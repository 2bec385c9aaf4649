"""The tiny preset: BPE tokenizer trained on the data, small Llama model, save/load through the Auto classes."""

from __future__ import annotations

import pytest
import torch

from geffect.data.collate import IGNORE_INDEX, encode_qa
from geffect.data.templates import get_template
from geffect.models.tiny import BOS, EOS, PAD, UNK, benchmark_texts, build_tiny, build_tiny_model, train_tokenizer

TEXTS = [
    "Question: Where was Adaeze Ekwueme born?\nAnswer: Adaeze Ekwueme was born in Lyon, France.",
    'The latest book by Adaeze Ekwueme is "The Winter of the Salt Violin".',
    'Who wrote "Pride and Prejudice"? Jane Austen, in 1813.',
] * 20
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.mark.parametrize(
    "text",
    ["Adaeze Ekwueme was born in Lyon, France.", "two  spaces\n and a newline\t", "Zoë naïve café — 東京 🙂", ""],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids  # byte level: every string is encodable
    assert tokenizer.decode(ids) == text


def test_leading_space_is_implicit(tokenizer):
    # As with Llama's tokenizer, a word opening a text is the same token as that word after a space.
    assert (
        tokenizer("Ekwueme", add_special_tokens=False)["input_ids"]
        == tokenizer(" Ekwueme", add_special_tokens=False)["input_ids"]
    )
    question = tokenizer("Where was Adaeze Ekwueme born?", add_special_tokens=False)["input_ids"]
    answer = tokenizer("Adaeze Ekwueme was born in Lyon.", add_special_tokens=False)["input_ids"]
    assert answer[:2] == question[2:4]


def test_special_tokens(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (PAD, BOS, EOS, UNK)
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert len(ids) == 4
    with_bos = tokenizer("Adaeze Ekwueme", add_special_tokens=True)["input_ids"]
    without = tokenizer("Adaeze Ekwueme", add_special_tokens=False)["input_ids"]
    assert with_bos == [tokenizer.bos_token_id] + without
    # Ordinary text never yields special ids, and learned merges make the training text's words single tokens.
    assert not ids & set(tokenizer(" ".join(TEXTS[:3]), add_special_tokens=False)["input_ids"])
    assert len(tokenizer(" Ekwueme was born", add_special_tokens=False)["input_ids"]) == 3


def test_training_is_deterministic(tokenizer):
    again = train_tokenizer(TEXTS, vocab_size=400)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_encode_qa_labels_answer_and_eos(tokenizer):
    item = encode_qa(tokenizer, get_template("plain"), "Where was Adaeze Ekwueme born?", "In Lyon.")
    answer = tokenizer("In Lyon.", add_special_tokens=False)["input_ids"]
    assert item.input_ids[0] == tokenizer.bos_token_id
    assert item.labels[-len(answer) - 1 :] == answer + [tokenizer.eos_token_id]
    assert all(label == IGNORE_INDEX for label in item.labels[: -len(answer) - 1])


def test_model_matches_tokenizer_and_seed(tokenizer):
    state = torch.get_rng_state()
    a, b, c = (build_tiny_model(tokenizer, seed=s, **SMALL) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)  # the seed does not leak into the global RNG
    assert a.config.vocab_size == len(tokenizer)
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert a.config.model_type == "llama" and a.config.hidden_size == 32
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_save_load_round_trip_through_auto_classes(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build_tiny_model(tokenizer, seed=0, **SMALL).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "Question: Where was Adaeze Ekwueme born?\nAnswer: "
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert loaded_tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    assert (loaded_tokenizer.eos_token_id, loaded_tokenizer.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_tokenizer_covers_every_split_and_refusals(tiny_benchmark):
    from geffect.data import tofu
    from geffect.data.refusals import load_refusals

    texts = set(benchmark_texts(str(tiny_benchmark)))
    for split in ("full", "general", "holdout10", "world_facts_perturbed"):
        record = tofu.load_split(str(tiny_benchmark), split)[-1]
        assert record["question"] in texts and record["answer"] in texts
    perturbed = tofu.load_split(str(tiny_benchmark), "forget10_perturbed")[0]
    assert perturbed["paraphrased_answer"] in texts and set(perturbed["perturbed_answer"]) <= texts
    assert set(load_refusals()) <= texts


def test_build_tiny_is_deterministic(tiny_benchmark):
    (m1, t1), (m2, t2) = (build_tiny(str(tiny_benchmark), seed=1, **SMALL) for _ in range(2))
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
