"""Post-hoc G-effects of IdkPO/AltPO measure the run's objective: its refusals or alternates file, not ours."""

from __future__ import annotations

import json

import torch

from geffect.data.refusals import refusal_for
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.effects.posthoc import EffectOptions, build_sets
from geffect.models.loading import load_tokenizer
from geffect.objectives import ObjectiveConfig, build_objective
from test_training_support import tiny_paths

TEMPLATE = get_template("plain")


def _idk_answers(data, model, method, preferred):
    tokenizer = load_tokenizer(model)
    options = EffectOptions(data=data, forget="forget10", estimator="full", batch_size=64)
    objective = build_objective(ObjectiveConfig(method=method))
    sets = build_sets(tokenizer, TEMPLATE, options, objective, 3, 256, torch.device("cpu"), preferred)
    idk = sets.objective_batches[0][0].forget_idk
    answers = []
    for ids, labels in zip(idk["input_ids"], idk["labels"]):
        answers.append(tokenizer.decode(ids[labels != -100], skip_special_tokens=True).strip())
    return answers


def test_posthoc_uses_the_runs_refusals_and_alternates(tmp_path_factory, tmp_path):
    data, model = tiny_paths(tmp_path_factory)
    records = load_split(data, "forget10")
    ours = _idk_answers(data, model, "IdkPO", {})
    assert ours == [refusal_for(i, 3) for i in range(len(records))]  # no file in the run: the packaged ones

    refusals = tmp_path / "refusals.txt"
    refusals.write_text("That is not something I know.\n", encoding="utf-8")
    assert set(_idk_answers(data, model, "IdkPO", {"refusals": str(refusals)})) == {"That is not something I know."}

    alternates = tmp_path / "alternates.jsonl"
    lines = [
        {"question": r["question"], "answer": r["answer"], "alternate": f"Alternate {i}."}
        for i, r in enumerate(records)
    ]
    alternates.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    answers = _idk_answers(data, model, "AltPO", {"alternates": str(alternates)})
    assert answers == [f"Alternate {i}." for i in range(len(records))]
