"""Acceptance 2: every method, one epoch on forget10 of the built-in benchmark, raises the forget risk of a
fine-tuned tiny model, stays finite and logs one line per optimizer step.

Uses the session fixtures `tiny_benchmark` / `tiny_target_model` of tests/conftest.py when they exist
(folders, as `geffect finetune` writes them); otherwise fine-tunes the tiny random model of
test_training_support on the benchmark here (a few seconds).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from geffect.data.collate import collate, pad_token_id
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.io import read_jsonl
from geffect.models.loading import load_model_and_tokenizer
from geffect.objectives import get_method, method_names
from geffect.objectives.tokens import score
from geffect.training.batches import encode_records
from geffect.training.unlearn import unlearn
from test_training_support import config, tiny_paths

TEMPLATE = get_template("plain")


def _encoded(tokenizer, data: str, split: str):
    return encode_records(tokenizer, TEMPLATE, load_split(data, split), max_length=256)


@torch.no_grad()
def forget_risk(model_dir: str, data: str) -> float:
    """Mean token NLL of the whole forget10 split (an independent computation: one padded batch)."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    return score(model, collate(_encoded(tokenizer, data, "forget10"), pad_token_id(tokenizer))).risk().item()


@functools.cache
def _finetuned(data: str, model_dir: str) -> str:
    """The tiny random model trained on the `full` split, so that there is knowledge to remove."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    model.train()
    items = _encoded(tokenizer, data, "full")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        order = torch.randperm(len(items), generator=generator).tolist()
        for start in range(0, len(order), 20):
            batch = collate([items[i] for i in order[start : start + 20]], pad_token_id(tokenizer))
            score(model, batch).risk().backward()
            optimizer.step()
            optimizer.zero_grad()
    out = str(Path(model_dir).parent / "target")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def target(request, tmp_path_factory) -> tuple[str, str]:
    """(data folder, fine-tuned model folder)."""
    try:
        data, model = request.getfixturevalue("tiny_benchmark"), request.getfixturevalue("tiny_target_model")
        return str(getattr(data, "path", data)), str(getattr(model, "path", model))
    except pytest.FixtureLookupError:
        data, model = tiny_paths(tmp_path_factory)
        return data, _finetuned(data, model)


@pytest.fixture(scope="module")
def risk_before(target) -> float:
    return forget_risk(target[1], target[0])


def _alternates(data: str, folder: Path) -> str:
    """AltPO's alternate answers (JSON Lines as OpenUnlearning's AltPO generate.py writes): a perturbed answer."""
    import json

    path = folder / "alternates.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": r["question"], "answer": r["answer"], "alternate": r["perturbed_answer"][0]}
            for r in load_split(data, "forget10_perturbed")]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("method", method_names())
def test_one_epoch_raises_forget_risk(target, risk_before, tmp_path, method):
    data, model = target
    extra = {"alternates": _alternates(data, tmp_path / "alt")} if method == "AltPO" else {}
    options = dict(method=method, template="plain", batch_size=4, grad_accum=1, lr=2e-3, **extra)
    result = unlearn(config(data, model, tmp_path / method, **options))
    log = read_jsonl(tmp_path / method / "log.jsonl")
    assert [record["step"] for record in log] == list(range(1, result.steps + 1))
    assert result.steps == math.ceil(len(load_split(data, "forget10")) / 4)
    for record in log:
        for key in ("loss", "forget_loss", "forget_risk", "lr", "grad_norm"):
            assert math.isfinite(record[key]), (record["step"], key)
        if result.summary["objective"]["retain_loss"] != "none":
            assert math.isfinite(record["retain_loss"]) and math.isfinite(record["retain_risk"])
    if get_method(method).weighted:
        assert "mean_token_weight" in log[0] or "mean_item_weight" in log[0]
    after = forget_risk(str(result.model_dir), data)
    print(f"{method}: forget risk {risk_before:.3f} -> {after:.3f}")
    assert after > risk_before + 0.05, (method, risk_before, after)
