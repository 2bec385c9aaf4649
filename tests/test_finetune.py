"""Fine-tuning: determinism, atomic output, exact-match scoring, the CLI and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geffect.cli.main import main
from geffect.data.templates import get_template
from geffect.errors import TrainingDiverged, UsageError
from geffect.evaluation.generation import generate_answers
from geffect.models.loading import load_model_and_tokenizer
from geffect.models.tiny import build_tiny_model, train_tokenizer
from geffect.training.finetune import (
    FinetuneConfig,
    answer_loss,
    autocast_dtype,
    exact_match_accuracy,
    finetune,
    fixed_sample,
    length_grouped_batches,
    train,
)
from prerequisites import TOFU_DIR

TOFU = str(TOFU_DIR)  # the local TOFU copy: tests marked needs_tofu read it
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_length_grouped_batches_cover_everything_once():
    lengths = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5, 3]
    batches = length_grouped_batches(lengths, 3, torch.Generator().manual_seed(0), group=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 3 for b in batches)
    assert batches == length_grouped_batches(lengths, 3, torch.Generator().manual_seed(0), group=2)
    assert batches != length_grouped_batches(lengths, 3, torch.Generator().manual_seed(1), group=2)


def test_fixed_sample_is_evenly_spaced():
    records = [{"i": i} for i in range(10)]
    assert [r["i"] for r in fixed_sample(records, 5)] == [0, 2, 4, 6, 8]
    assert fixed_sample(records, None) == records and fixed_sample(records, 50) == records
    assert fixed_sample(records, 0) == []


class _Oracle(torch.nn.Module):
    """A stand-in for a causal LM whose greedy output is scripted per question (parsed from the prompt)."""

    def __init__(self, tokenizer, replies: dict[str, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.replies = tokenizer, replies
        self.seen_padding_side = set()

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            if mask[0] == 0:
                self.seen_padding_side.add("left")
            if mask[-1] == 0:
                self.seen_padding_side.add("right")
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            question = prompt.removeprefix("Question: ").removesuffix("\nAnswer: ")
            reply = self.tokenizer(self.replies[question], add_special_tokens=False)["input_ids"]
            reply = (reply + [eos_token_id] + [17] * max_new_tokens)[:max_new_tokens]  # junk after EOS is cut
            rows.append(ids + reply)
        width = max(map(len, rows))
        return torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])


def test_answer_only_logits_give_the_models_own_loss():
    """logits_to_keep from the first answer position: the same mean answer-token NLL as model(labels=...)."""
    tokenizer = train_tokenizer(["Question: who wrote it?\nAnswer: Jane Austen wrote it."] * 4, vocab_size=300)
    model = build_tiny_model(tokenizer, seed=0, **SMALL).double()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tokenizer), (3, 11), generator=gen)
    labels = ids.clone()
    labels[0, :4], labels[1, :6], labels[2, :5] = -100, -100, -100  # prompts of different lengths
    mask = torch.ones_like(ids)
    ids[2, 8:], mask[2, 8:], labels[2, 8:] = 0, 0, -100  # right padding
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        expected = model(**batch).loss.item()
        assert answer_loss(model, batch, answers_only=True).item() == pytest.approx(expected, rel=1e-12)
        assert answer_loss(model, batch, answers_only=False).item() == expected


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)
    with pytest.raises(UsageError, match="--precision"):
        autocast_dtype("fp16", cpu)


def test_exact_match_counts_only_exact_answers():
    tokenizer = train_tokenizer(["Where is Lyon? Lyon is in France. Paris is in France too."] * 5, vocab_size=300)
    records = [
        {"question": "Where is Lyon?", "answer": "Lyon is in France."},  # right
        {"question": "Where is Paris?", "answer": "Paris is in France."},  # wrong city
        {"question": "Is Lyon big?", "answer": "Yes."},  # right, surrounded by whitespace
        {"question": "Where is it? Really, where is it?", "answer": "Lyon is in France."},  # prefix only
        {"question": "Is Paris big?", "answer": "Yes."},  # right
    ]
    replies = {
        "Where is Lyon?": "Lyon is in France.",
        "Where is Paris?": "Lyon is in France.",
        "Is Lyon big?": " Yes. ",
        "Where is it? Really, where is it?": "Lyon is in",
        "Is Paris big?": "Yes.",
    }
    oracle = _Oracle(tokenizer, replies)
    template = get_template("plain")
    assert exact_match_accuracy(oracle, tokenizer, records, template, batch_size=2) == pytest.approx(3 / 5)
    assert exact_match_accuracy(oracle, tokenizer, records, template, batch_size=5) == pytest.approx(3 / 5)
    assert oracle.seen_padding_side == {"left"}
    assert generate_answers(oracle, tokenizer, template, ["Where is Paris?"]) == ["Lyon is in France."]


def test_nan_loss_stops_training(tmp_path):
    tokenizer = train_tokenizer(["some text to learn"] * 3, vocab_size=280)
    model = build_tiny_model(tokenizer, seed=0, **SMALL)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    from geffect.data.collate import encode_qa

    items = [encode_qa(tokenizer, get_template("plain"), "q", "some text", index=0)]
    with pytest.raises(TrainingDiverged, match="step 1"):
        train(model, items, tokenizer.pad_token_id, epochs=1, lr=1e-3, batch_size=1, seed=0, progress=False)


def _quick(data, out, split="retain90", **kw):
    settings = dict(model_overrides=SMALL, max_steps=3, batch_size=8, eval_limit=4, progress=False)
    settings.update(kw)
    return finetune(FinetuneConfig(data=str(data), split=split, model="tiny", out=out, **settings))


def test_finetune_is_deterministic_and_refuses_existing_out(tiny_benchmark, tmp_path):
    first = _quick(tiny_benchmark, tmp_path / "a")
    second = _quick(tiny_benchmark, tmp_path / "b")
    other_seed = _quick(tiny_benchmark, tmp_path / "c", seed=1)
    a, b, c = (_weights(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first.steps == 3 and first.accuracy == second.accuracy and other_seed.steps == 3

    summary = json.loads((tmp_path / "a" / "finetune.json").read_text())
    assert summary["config"]["split"] == "retain90" and summary["steps"] == 3 and len(summary["losses"]) == 3
    assert summary["exact_match"]["items"] == 4 and summary["exact_match"]["of"] == 360
    assert summary["general_items"] > 0  # general.json is part of the training data

    with pytest.raises(UsageError, match="--overwrite"):
        _quick(tiny_benchmark, tmp_path / "a", seed=1)
    assert all(torch.equal(a[k], v) for k, v in _weights(tmp_path / "a").items())  # untouched
    _quick(tiny_benchmark, tmp_path / "a", seed=1, overwrite=True)
    assert all(torch.equal(c[k], v) for k, v in _weights(tmp_path / "a").items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_diverging_run_writes_nothing(tiny_benchmark, tmp_path):
    # lr 1e12 (which diverged in a few steps) is refused before anything is loaded now; a NaN loss is
    # test_nan_loss_stops_training, overflowing weights test_update_that_overflows_the_weights_saves_nothing.
    with pytest.raises(UsageError, match="--lr must be a positive number at most 10"):
        _quick(tiny_benchmark, tmp_path / "nan", lr=1e12, max_steps=20)
    assert list(tmp_path.iterdir()) == []


def test_fixture_models_learned_and_share_a_tokenizer(tiny_target_model, tiny_retain_model):
    for folder in (tiny_target_model, tiny_retain_model):
        summary = json.loads((Path(folder) / "finetune.json").read_text())
        assert sum(summary["losses"][-20:]) / 20 < 0.4 * summary["first_loss"]
    assert (Path(tiny_target_model) / "tokenizer.json").read_bytes() == (
        Path(tiny_retain_model) / "tokenizer.json"
    ).read_bytes()


def test_batched_greedy_decoding_matches_one_by_one(tiny_target_model, tiny_benchmark):
    from geffect.data.tofu import load_split

    model, tokenizer = load_model_and_tokenizer(str(tiny_target_model))
    questions = [r["question"] for r in load_split(str(tiny_benchmark), "forget10")[:6]]
    template = get_template("plain")
    batched = generate_answers(model, tokenizer, template, questions, batch_size=6, max_new_tokens=12)
    single = [generate_answers(model, tokenizer, template, [q], batch_size=1, max_new_tokens=12)[0] for q in questions]
    assert batched == single
    assert any(batched)


def test_finetune_a_local_model_folder(tiny_target_model, tiny_benchmark, tmp_path):
    result = finetune(
        FinetuneConfig(
            data=str(tiny_benchmark),
            split="forget10",
            model=str(tiny_target_model),
            out=tmp_path / "more",
            max_steps=1,
            batch_size=4,
            eval_limit=2,
            progress=False,
        )
    )
    assert result.config["template"] == "plain" and result.config["lr"] == 1e-5 and result.steps == 1
    before, after = _weights(Path(tiny_target_model)), _weights(tmp_path / "more")
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.needs_tofu
def test_cli_on_tofu(tmp_path, capsys):
    out = tmp_path / "tofu-tiny"
    code = main(
        [
            "finetune",
            "--data",
            TOFU,
            "--split",
            "full",
            "--model",
            "tiny",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--eval-limit",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact match:" in printed and "of 4000 records of split full" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "finetune.json"} <= {p.name for p in out.iterdir()}
    assert main(["finetune", "--data", TOFU, "--model", "tiny", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _bad_data(tmp_path) -> str:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "full.json").write_text('{"question": "q only"}\n')
    return str(folder)


@pytest.mark.parametrize(
    "args, message",
    [
        # every case that keeps --data at TOFU reads the local TOFU copy
        pytest.param(["--split", "fulll"], "unknown split", marks=pytest.mark.needs_tofu),
        (["--data", "/no/such/folder"], "does not exist"),
        pytest.param(["--model", "not a model"], "unknown model", marks=pytest.mark.needs_tofu),
        pytest.param(["--model", "tinyy"], "unknown model", marks=pytest.mark.needs_tofu),
        (["--data", "BAD"], "lacks field"),
        pytest.param(["--epochs", "0"], "--epochs", marks=pytest.mark.needs_tofu),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    argv = {"--data": TOFU, "--split": "full", "--model": "tiny", "--out": str(tmp_path / "out")}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = _bad_data(tmp_path) if value == "BAD" else value
    assert main(["finetune", *[x for pair in argv.items() for x in pair]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_update_that_overflows_the_weights_saves_nothing(tiny_benchmark, tmp_path, monkeypatch):
    """An update that overflows a weight (with a finite loss) stops the run before anything is saved (exit 1 on
    the command line). A learning rate that would do it on its own (1e39, infinite in float32) is refused up
    front now (tests/test_bad_inputs.py), so the overflow is injected after the training steps."""
    import geffect.training.finetune as finetune_module

    train = finetune_module._train

    def overflowing(run, config, settings):
        losses = train(run, config, settings)
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] = math.inf
        return losses

    monkeypatch.setattr(finetune_module, "_train", overflowing)
    with pytest.raises(TrainingDiverged, match="weights are not finite after 1 optimiser step"):
        _quick(tiny_benchmark, tmp_path / "inf", max_steps=1, warmup_ratio=0.0)
    assert list(tmp_path.iterdir()) == []
